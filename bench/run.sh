#!/usr/bin/env bash
# Benchmark: `cutover sync --once` against mbsync (isync) on the same seeded mail.
# Builds the release binaries and runs bench/bench.rs; see bench/README.md.
#
#   bench/run.sh                                   # 3 users x 2,000 messages (~300 MB)
#   BENCH_USERS=3 BENCH_MESSAGES=200 bench/run.sh  # quick run
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

cargo build --release --bins --examples
# The testbeds need a short, world-searchable temporary directory (unix socket paths).
export TMPDIR="${BENCH_TMPDIR:-/tmp}"
exec cargo run --release --quiet --example bench
