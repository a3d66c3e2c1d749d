#!/usr/bin/env bash
# The one test command: installs what the tests need (etcd, protoc), then runs every test
# of the workspace against real servers started by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export CARGO_TERM_COLOR=never
cargo build --locked --workspace --all-targets
cargo test --locked --workspace -- --test-threads=2
