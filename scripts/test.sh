#!/usr/bin/env bash
# The one test command: installs what the tests need (etcd, protoc), then runs every test
# of the workspace against real servers started by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh --tests
export CARGO_TERM_COLOR=never
# No unused dependency in any crate. cargo-machete only reads sources (a second or two);
# installed once into ~/.cargo/bin. A false positive (a crate used only by a macro or for a
# feature) goes in its Cargo.toml under `[package.metadata.cargo-machete] ignored`, with why.
if ! cargo machete --version >/dev/null 2>&1; then
  echo "installing cargo-machete"
  cargo install cargo-machete --version 0.9.2 --locked --quiet
fi
if ! unused=$(cargo machete --skip-target-dir 2>&1); then
  printf '%s\n' "$unused" >&2
  echo "error: unused dependencies (listed above): remove each from its crate's Cargo.toml, and from [workspace.dependencies] when no crate uses it any more" >&2
  exit 1
fi
# The deploy/ files, by the tools that read them (tests/tests/ops_files.rs checks them too,
# the unit with ExecStart pointed at the built binary, since verify wants it to exist).
(cd deploy/prometheus && promtool check rules kvgit-alerts.yml >/dev/null && promtool test rules kvgit-alerts.test.yml)
# The CLI tests run the real `kvgit` binary: build every target first.
cargo build --locked --workspace --all-targets
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
if cargo nextest --version >/dev/null 2>&1; then
  # Tests run as separate processes, several at once (.config/nextest.toml): most wait on
  # servers, so the suite takes a fraction of one-binary-at-a-time `cargo test`.
  cargo nextest run --locked --workspace 2>&1 | tee "$log" || status=$?
  cargo test --locked --workspace --doc 2>&1 | tee -a "$log" || status=$?
  # One closing line over every test (nextest's summary, and the doc tests).
  awk '/Summary \[/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
       /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
       END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
else
  echo "cargo-nextest not found: running the tests one binary at a time with cargo test (slower; 'cargo install cargo-nextest --locked' to run them in parallel)"
  cargo test --locked --workspace --no-fail-fast -- --test-threads=2 2>&1 | tee "$log" || status=$?
  # One closing line over every test binary (cargo's own last line is a doc-test crate's).
  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
       END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
fi
exit "$status"
