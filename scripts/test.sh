#!/usr/bin/env bash
# The one test command: installs what the tests need (etcd, protoc), then runs every test
# of the workspace against real servers started by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export CARGO_TERM_COLOR=never
# The CLI tests run the real `kvgit` binary: build every target first.
cargo build --locked --workspace --all-targets
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --workspace -- --test-threads=2 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo's own last line is a doc-test crate's).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
