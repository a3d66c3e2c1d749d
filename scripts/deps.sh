#!/usr/bin/env bash
# Installs what building and running kvgit needs on Debian/Ubuntu: etcd (server + etcdctl),
# protoc (etcd-client's build needs it), git and curl. With --tests, also what the tests
# drive for real: OpenSSH (their own sshd), Prometheus + promtool, systemd-analyze and
# Chromium. Does nothing when they are already there.
set -euo pipefail
tests=false
[ "${1:-}" = "--tests" ] && tests=true
missing=()
[ -x /usr/bin/etcd ] || command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v curl >/dev/null 2>&1 || missing+=(curl)
tools=(etcd etcdctl protoc git curl cargo)
if $tests; then
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
  # deploy/ checks: promtool + a Prometheus the ops tests start; systemd-analyze verify.
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  # The web page tests drive a real headless browser (tests/src/browser.rs).
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  tools+=(ssh-keygen sshd promtool prometheus systemd-analyze chromium)
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian's packages may start a system etcd on 2379 (or sshd, or Prometheus on 9090);
# kvgit's tests start their own on free loopback ports with temp dirs and never touch them.
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/bin/$tool" ] || [ -x "/usr/sbin/$tool" ] || { echo "missing after install: $tool" >&2; exit 1; }
done
