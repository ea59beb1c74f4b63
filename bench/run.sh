#!/usr/bin/env bash
# Benchmark: `cutover sync --once` against mbsync (isync) on the same seeded mail.
# Builds the release binaries and runs bench/bench.rs; see bench/README.md.
#
#   bench/run.sh                                   # 3 users x 2,000 messages (~300 MB)
#   BENCH_USERS=3 BENCH_MESSAGES=200 bench/run.sh  # quick run
#
# BENCH_TMPDIR: where the Dovecot testbeds go (default /dev/shm if it is a writable tmpfs
# with room, else /tmp); BENCH_STATE_DIR: where the tools' own state goes, on disk
# (default a new directory under /var/tmp, removed at the end).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="${HOME:-/root}/.cargo/bin:${PATH}"

missing=()
[ -x /usr/sbin/dovecot ] || missing+=(dovecot-imapd)
[ -x "${BENCH_MBSYNC_BIN:-/usr/bin/mbsync}" ] || missing+=(isync)
[ -x /usr/bin/time ] || missing+=(time)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "missing: ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
fi

# Where the testbeds go (the Dovecot servers' mail, configs and sockets): a short,
# world-searchable directory (unix socket paths), by default a tmpfs. On a disk filesystem
# the servers' file creation can cost more than the tools (ext4 without a journal slows
# down creating files after many were deleted), see bench/README.md. The tools' own state
# (cutover's spool, mbsync's SyncState) stays on disk: BENCH_STATE_DIR, default /var/tmp.
fstype() { df --output=fstype -- "$1" 2>/dev/null | tail -n 1 | tr -d ' ' || true; }
if [ -n "${BENCH_TMPDIR:-}" ]; then
    tmpdir="$BENCH_TMPDIR"
    why="BENCH_TMPDIR"
else
    # What the testbeds hold at most: every round's destinations stay until the end.
    # About 50 KB per seeded message, a copy in each source and destination (two tools x
    # (1 + BENCH_REPEAT)), the throttle phase's, and a quarter for Dovecot's indexes.
    num() { # the number in $1 (bench.rs allows `2_000`), else $2
        local v="${1//[_ ]/}"
        if [[ "$v" =~ ^[0-9]{1,9}$ ]]; then echo "$((10#$v))"; else echo "$2"; fi
    }
    users=$(num "${BENCH_USERS:-}" 3)
    per_user=$(num "${BENCH_MESSAGES:-}" 2000)
    copies=$(( 2 * (1 + $(num "${BENCH_REPEAT:-}" 3)) ))
    throttle=$(num "${BENCH_THROTTLE_MESSAGES:-}" 1000)
    [ "$throttle" -le "$per_user" ] || throttle=$per_user
    # About 50 KB per seeded message, 8 KB with BENCH_SIZE=small (a file of 0.5-3 KiB
    # takes whole pages, plus the servers' indexes).
    per_msg_kb=50
    [ "${BENCH_SIZE:-}" != small ] || per_msg_kb=8
    need_kb=$(( (users * per_user * copies + 2 * throttle) * per_msg_kb * 5 / 4 ))
    shm_fs=$(fstype /dev/shm)
    shm_avail_kb=$(df -k --output=avail /dev/shm 2>/dev/null | tail -n 1 | tr -d ' ' || true)
    if [ "$shm_fs" != tmpfs ]; then
        tmpdir=/tmp
        why="/dev/shm is not a tmpfs (${shm_fs:-missing})"
    elif [ ! -d /dev/shm ] || [ ! -w /dev/shm ] || [ ! -x /dev/shm ]; then
        tmpdir=/tmp
        why="/dev/shm is not a writable directory"
    elif [ "${shm_avail_kb:-0}" -lt "$need_kb" ]; then
        tmpdir=/tmp
        why="/dev/shm has $(( ${shm_avail_kb:-0} / 1024 )) MiB free, the testbeds need about $(( need_kb / 1024 )) MiB"
    else
        tmpdir=/dev/shm
        why="a writable tmpfs with $(( shm_avail_kb / 1024 )) MiB free (the testbeds need about $(( need_kb / 1024 )) MiB)"
    fi
fi
echo "testbeds under $tmpdir ($(fstype "$tmpdir")): $why"

cargo build --release --bins --examples
export TMPDIR="$tmpdir"
exec cargo run --release --quiet --example bench
