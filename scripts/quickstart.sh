#!/usr/bin/env bash
# One command from a fresh machine to a first kvgit commit: installs etcd if missing, starts
# it on loopback, writes example keys, runs `kvgit export`, changes a key, exports again,
# and shows the Git history and a plan. Everything lives in one work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
./scripts/deps.sh
echo "== building kvgit (release)"
cargo build --release --locked -p kvgit
kvgit="$root/target/release/kvgit"

work=${KVGIT_QUICKSTART_DIR:-$(mktemp -d /tmp/kvgit-quickstart.XXXXXX)}
mkdir -p "$work"
port=${KVGIT_QUICKSTART_PORT:-23790}
peer=$((port + 1))
endpoint="http://127.0.0.1:$port"

echo "== starting etcd on $endpoint (data in $work/etcd)"
etcd --name quickstart --data-dir "$work/etcd" \
  --listen-client-urls "$endpoint" --advertise-client-urls "$endpoint" \
  --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
  --initial-cluster "quickstart=http://127.0.0.1:$peer" >"$work/etcd.log" 2>&1 &
etcd_pid=$!
trap 'kill $etcd_pid 2>/dev/null || true' EXIT
export ETCDCTL_API=3
for _ in $(seq 1 100); do
  etcdctl --endpoints "$endpoint" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done
etcdctl --endpoints "$endpoint" endpoint health

echo "== writing example keys"
for i in 1 2 3; do
  etcdctl --endpoints "$endpoint" put "/sigil/entries/node-$i/status" "up" >/dev/null
  etcdctl --endpoints "$endpoint" put "/sigil/entries/node-$i/addr" "10.0.0.$i:7000" >/dev/null
done
etcdctl --endpoints "$endpoint" put "/sigil/routes/api" "node-1,node-2" >/dev/null

listen="127.0.0.1:$((port + 2))"
sed -e "s#http://127.0.0.1:2379#$endpoint#" -e "s#127.0.0.1:9464#$listen#" \
  -e 's#batch_window = "1s"#batch_window = "300ms"#' examples/kvgit.toml >"$work/kvgit.toml"
cd "$work"

echo "== kvgit export"
"$kvgit" -c kvgit.toml export
echo "== an operational change: node-2 goes down"
etcdctl --endpoints "$endpoint" put /sigil/entries/node-2/status "down" >/dev/null
"$kvgit" -c kvgit.toml export
echo "== git log of $work/state.git"
git --git-dir state.git log --stat --format='%h %s%n%b'
echo "== kvgit status"
"$kvgit" -c kvgit.toml status
echo "== kvgit plan (Git -> KV): nothing to do"
"$kvgit" -c kvgit.toml plan

echo "== kvgit serve: the service follows etcd and commits each change"
"$kvgit" -c kvgit.toml serve >serve.log 2>&1 &
serve_pid=$!
trap 'kill $serve_pid 2>/dev/null || true; kill $etcd_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fs "http://$listen/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
before=$(git --git-dir state.git rev-list --count main)
etcdctl --endpoints "$endpoint" put /sigil/entries/node-3/status "draining" >/dev/null
for _ in $(seq 1 100); do
  [ "$(git --git-dir state.git rev-list --count main)" -gt "$before" ] && break
  sleep 0.1
done
git --git-dir state.git log -1 --stat --format='%h %s%n%b' main
echo "== metrics (http://$listen/metrics)"
curl -fs "http://$listen/metrics" | grep -E '^kvgit_(commits_total|events_total)' || true
kill -TERM "$serve_pid"
wait "$serve_pid" || true
echo
echo "Done. Work directory: $work (etcd is stopped on exit; rerun with KVGIT_QUICKSTART_DIR=$work to keep using it)."
