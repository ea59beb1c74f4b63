#!/usr/bin/env bash
# Cyrus IMAP and Courier IMAP for the legacy-source tests (tests/legacy_sources.rs).
#
# On Debian 12 cyrus-imapd and courier-imap conflict with dovecot-imapd, so they are not
# installed: their packages and the libraries the host lacks are fetched with
# `apt-get download` and unpacked with `dpkg -x` into a private tree. Nothing is installed,
# no service is started, no host file is touched. The harness (src/legacy_servers.rs)
# runs Cyrus from that tree with its own config, and Courier (whose paths are compiled
# in) in a private mount namespace where the tree is overlaid on /usr and /etc.
#
# Usage: .ci/legacy-servers.sh [DEST]   (default target/legacy-servers). The tree is
# cached: a second run with the same package list does nothing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEST="${1:-target/legacy-servers}"
# The servers, then the libraries Debian 12's base system and dovecot-imapd do not bring.
PACKAGES=(
    cyrus-imapd cyrus-common sasl2-bin
    courier-imap courier-base courier-authlib courier-authlib-userdb courier-authdaemon
    libcourier-unicode4 libgamin0
    libical3 libidn12 libltdl7 libpcre3 libxapian30
)
STAMP="$DEST/root/.packages"
want="$(printf '%s\n' "${PACKAGES[@]}")"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    echo "legacy servers: cached in $DEST/root"
    exit 0
fi

rm -rf "$DEST/debs" "$DEST/root"
mkdir -p "$DEST/debs" "$DEST/root"
# _apt cannot write into a private directory; -o APT::Sandbox::User=root says so instead
# of printing a warning per package.
(cd "$DEST/debs" && apt-get -o APT::Sandbox::User=root download "${PACKAGES[@]}")
for deb in "$DEST"/debs/*.deb; do
    dpkg -x "$deb" "$DEST/root"
done

# Every binary the harness runs must find its libraries in the tree or on the host.
libs="$DEST/root/usr/lib/x86_64-linux-gnu:$DEST/root/usr/lib:$DEST/root/lib/x86_64-linux-gnu:$DEST/root/usr/lib/courier-authlib"
for bin in usr/lib/cyrus/bin/master usr/lib/cyrus/bin/imapd usr/lib/cyrus/bin/ctl_cyrusdb \
    usr/sbin/saslpasswd2 usr/sbin/couriertcpd usr/bin/imapd usr/lib/courier/courier/imaplogin \
    usr/lib/courier/courier-authlib/authdaemond; do
    if LD_LIBRARY_PATH="$libs" ldd "$DEST/root/$bin" | grep 'not found'; then
        echo "legacy servers: $bin misses libraries (above)" >&2
        exit 1
    fi
done
printf '%s\n' "$want" > "$STAMP"
echo "legacy servers: unpacked into $DEST/root"
