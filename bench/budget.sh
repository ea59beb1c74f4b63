#!/usr/bin/env bash
# Exchange's per-mailbox budget: cutover through the Exchange-like test proxy with a
# per-mailbox token bucket. Builds the release binaries and runs bench/budget.rs; see
# bench/README.md, section "The budget benchmark".
#
#   bench/budget.sh                                  # 20 mailboxes x 20/s, ~5 min per variant
#   BUDGET_RATE=5 BUDGET_SECS=300 bench/budget.sh    # a budget a small machine can carry
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${HOME:-/root}/.cargo/bin:${PATH}"
[ -x /usr/sbin/dovecot ] || { echo "missing: dovecot-imapd" >&2; exit 1; }
# The testbed (Maildirs, indexes, sockets) in memory if there is a tmpfs: the servers'
# file creation is not what is measured.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi
cargo build --release --bins --examples
exec cargo run --release --quiet --example budget
