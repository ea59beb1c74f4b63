#!/usr/bin/env bash
# Benchmark: the daemon (`cutover run`) with thousands of mailboxes and a populated spool:
# time to READY, the status file's cost on the runtime thread, rewrites while idle.
# Builds the release binaries and runs bench/scale.rs; see bench/README.md ("Scale").
#
#   bench/scale.sh                                  # 5,000 mailboxes x 200 records
#   SCALE_MAILBOXES=500 bench/scale.sh              # quick run
#
# BENCH_STATE_DIR: where the spool goes (default /var/tmp; a new directory, removed at
# the end).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${HOME:-/root}/.cargo/bin:${PATH}"
cargo build --release --bins --examples
exec cargo run --release --quiet --example scale
