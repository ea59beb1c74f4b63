#!/usr/bin/env bash
# Benchmark: cutover's Maildir source against its IMAP source (and mbsync) on the same
# mail; see bench/README.md, "Maildir source".
#
#   bench/maildir.sh                                   # 3 users x 1,000 messages
#   BENCH_USERS=2 BENCH_MESSAGES=300 bench/maildir.sh  # quick run
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${HOME:-/root}/.cargo/bin:${PATH}"
for b in /usr/sbin/dovecot /usr/bin/mbsync /usr/bin/time; do
    [ -x "$b" ] || { echo "missing: $b" >&2; exit 1; }
done
cargo build --release --bins --examples
exec cargo run --release --quiet --example maildir_bench
