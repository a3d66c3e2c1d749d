#!/usr/bin/env bash
# Installs what building and testing kvgit needs on Debian/Ubuntu: etcd (server + etcdctl),
# protoc (etcd-client's build needs it) and OpenSSH (the ssh remote tests run their own
# sshd). Does nothing when they are already there.
set -euo pipefail
missing=()
[ -x /usr/bin/etcd ] || command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v curl >/dev/null 2>&1 || missing+=(curl)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian's package may start a system etcd on 2379; kvgit's tests start their own on free
# loopback ports and never touch it. The same goes for sshd: the ssh tests start their own
# `sshd -D` on a free loopback port.
for tool in etcd etcdctl protoc git curl cargo ssh-keygen sshd; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/bin/$tool" ] || [ -x "/usr/sbin/$tool" ] || { echo "missing after install: $tool" >&2; exit 1; }
done
