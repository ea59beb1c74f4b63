#!/usr/bin/env bash
# Mailboxes per hour for 1, 2 and 4 shards through the Exchange-like test proxy with a
# per-mailbox token bucket. Builds the release binaries and runs bench/fleet.rs; see
# bench/README.md, section "The fleet benchmark".
#
#   bench/fleet.sh                                   # 24 mailboxes x 40 messages, 4/s each
#   FLEET_SHARDS=1,2,4,8 FLEET_USERS=48 bench/fleet.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${HOME:-/root}/.cargo/bin:${PATH}"
[ -x /usr/sbin/dovecot ] || { echo "missing: dovecot-imapd" >&2; exit 1; }
[ -x /usr/bin/mbsync ] || { echo "missing: isync (mbsync)" >&2; exit 1; }
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi
cargo build --release --bins --examples
exec cargo run --release --quiet --example fleet
