#!/usr/bin/env bash
# Build the cutover appliance: a bootable Debian 12 (bookworm, amd64) VM disk image
# with cutover installed. See image/README.md.
#
#   sudo image/build.sh [OUTPUT]
#
# OUTPUT is the qcow2 to write (default image/out/cutover-<version>-bookworm-amd64.qcow2);
# other formats are written next to it with the same base name. Runs as root on a
# Debian 12 amd64 machine that reaches a Debian mirror. Needs no loop device, nbd or
# kpartx: the file systems are made from directories (mkfs.ext4 -d, mtools) and the
# disk is assembled in a plain file.
#
# Environment (all optional):
#   BIN=path                 take this cutover binary instead of `cargo build --release --locked`
#   MIRROR=url               Debian mirror (default: the one apt on this machine uses)
#   SECURITY_MIRROR=url      debian-security mirror (default: from apt's sources, else
#                            MIRROR with its last path component replaced by debian-security)
#   DISK_SIZE=8G             size of the virtual disk (the guest grows its root file
#                            system to the disk at every boot, so it can be enlarged later)
#   FORMATS="qcow2"          any of: qcow2 raw vmdk vhdx tar (tar = rootfs .tar.gz)
#   COMPRESS=1               compress the qcow2 (0: faster build, larger file)
#   STRIP=1                  strip debug info from the copy of the binary in the image
#   ROOT_PASSWORD=...        root's password (default: random, written to <base>.root-password)
#   EXPIRE_ROOT_PASSWORD=1   force a new root password at the first login (0: don't)
#   SSH_AUTHORIZED_KEYS=file install as /root/.ssh/authorized_keys
#   IMAGE_HOSTNAME=cutover   the guest's host name
#   EXTRA_PACKAGES="..."     more Debian packages to install (e.g. qemu-guest-agent)
#   WORKDIR=/var/tmp         where the temporary build directory is made (needs ~3 GB,
#                            on a file system mounted without nodev/noexec)
#   KEEP_WORK=0              1: keep the temporary directory (for debugging)
set -euo pipefail
umask 022

SUITE=bookworm
ARCH=amd64
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)

DISK_SIZE=${DISK_SIZE:-8G}
FORMATS=${FORMATS:-qcow2}
COMPRESS=${COMPRESS:-1}
STRIP=${STRIP:-1}
EXPIRE_ROOT_PASSWORD=${EXPIRE_ROOT_PASSWORD:-1}
IMAGE_HOSTNAME=${IMAGE_HOSTNAME:-cutover}
EXTRA_PACKAGES=${EXTRA_PACKAGES:-}
WORKDIR=${WORKDIR:-/var/tmp}
KEEP_WORK=${KEEP_WORK:-0}

# What goes into the image besides debootstrap's minbase (apt, dpkg, coreutils...).
PACKAGES=(
    systemd-sysv udev dbus kmod             # init, devices
    linux-image-amd64 initramfs-tools zstd  # kernel; initrd with MODULES=most (virtio, SATA,
                                            # NVMe, VMware pvscsi/LSI, Hyper-V storvsc)
    grub-pc-bin                             # grub-mkimage for the BIOS boot code (see below)
    ca-certificates                         # TLS to the legacy server and Office 365
    openssh-server chrony                   # remote access; time (TLS, OAuth tokens)
    systemd-resolved iproute2 netbase iputils-ping  # DHCP via systemd-networkd, DNS
    tzdata less nano procps                 # an admin's basics
    cloud-guest-utils fdisk e2fsprogs       # growpart + resize2fs: grow / to the disk
    unattended-upgrades                     # Debian security updates, daily
)
# Boot loader files taken from Debian's signed packages (extracted, not installed).
EFI_DEBS=(shim-signed shim-helpers-amd64-signed grub-efi-amd64-signed)

# Disk layout (512-byte sectors), GPT, boots with BIOS and with UEFI (Secure Boot too):
#   1  BIOS boot partition  1 MiB  GRUB core.img for BIOS
#   2  EFI system partition 126 MiB  shim + Debian's signed GRUB
#   3  root, ext4           the rest
BIOS_START=2048
BIOS_SECTORS=2048
ESP_START=4096
ESP_SECTORS=258048
ROOT_START=262144

log() { printf '\n==> %s\n' "$*" >&2; }
warn() { printf 'build.sh: warning: %s\n' "$*" >&2; }
die() {
    printf 'build.sh: error: %s\n' "$*" >&2
    exit 1
}

# --- Prerequisites ---------------------------------------------------------------------
APT_LINE="apt-get install -y debootstrap qemu-utils e2fsprogs fdisk dosfstools mtools"
[[ $(id -u) -eq 0 ]] || die "must run as root: sudo $0 $*"
[[ $(uname -m) == x86_64 ]] || die "builds an amd64 image and runs its tools in a chroot: needs an x86_64 host"
missing=()
for tool in debootstrap:debootstrap qemu-img:qemu-utils mkfs.ext4:e2fsprogs sfdisk:fdisk \
    mkfs.vfat:dosfstools mcopy:mtools mmd:mtools chroot:coreutils numfmt:coreutils \
    runuser:util-linux; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool%%:*} (package ${tool#*:})")
done
if ((${#missing[@]})); then
    printf 'build.sh: missing: %s\n' "${missing[@]}" >&2
    die "install the prerequisites with:  $APT_LINE"
fi
for f in $FORMATS; do
    case $f in qcow2 | raw | vmdk | vhdx | tar) ;; *) die "unknown format '$f' in FORMATS (qcow2 raw vmdk vhdx tar)" ;; esac
done
if [[ -n ${SSH_AUTHORIZED_KEYS:-} ]]; then
    [[ -r $SSH_AUTHORIZED_KEYS ]] || die "SSH_AUTHORIZED_KEYS=$SSH_AUTHORIZED_KEYS: not readable"
fi
DISK_BYTES=$(numfmt --from=iec "$DISK_SIZE") || die "DISK_SIZE=$DISK_SIZE: not a size (e.g. 8G)"
TOTAL_SECTORS=$((DISK_BYTES / 512))
# The root partition ends on a MiB boundary before the backup GPT (last 33 sectors).
ROOT_SECTORS=$(((TOTAL_SECTORS - 34 - ROOT_START) / 2048 * 2048))
((ROOT_SECTORS >= 2 * 1024 * 2048)) || die "DISK_SIZE=$DISK_SIZE is too small (at least 3G)"

# --- The Debian mirror: MIRROR, else what apt on this machine uses ----------------------
# Prints the first URI that apt's sources use for suite $1 (deb822 .sources and one-line
# .list files), without a trailing slash.
apt_uri_for_suite() {
    local suite=$1 f uri=""
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        uri=$(sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" |
            awk -v s="$suite" '$1 == "deb" && $3 == s { print $2; exit }')
        [[ -n $uri ]] && break
    done
    if [[ -z $uri ]]; then
        for f in /etc/apt/sources.list.d/*.sources; do
            [[ -r $f ]] || continue
            uri=$(awk -v s="$suite" '
                BEGIN { RS = ""; FS = "\n" }
                {
                    t = ""; u = ""; su = ""; en = "yes"
                    for (i = 1; i <= NF; i++) {
                        l = $i
                        if (l ~ /^[ \t]*#/ || l !~ /:/) continue
                        k = l; sub(/:.*/, "", k); k = tolower(k)
                        v = l; sub(/^[^:]*:[ \t]*/, "", v)
                        if (k == "types") t = " " v " "
                        else if (k == "uris") u = v
                        else if (k == "suites") su = " " v " "
                        else if (k == "enabled") en = tolower(v)
                    }
                    gsub(/[ \t]+/, " ", t); gsub(/[ \t]+/, " ", su)
                    if (en != "no" && index(t, " deb ") && index(su, " " s " ")) {
                        split(u, a, /[ \t]+/); print a[1]; exit
                    }
                }' "$f")
            [[ -n $uri ]] && break
        done
    fi
    printf '%s' "${uri%/}"
}
if [[ -z ${MIRROR:-} ]]; then
    MIRROR=$(apt_uri_for_suite "$SUITE")
    [[ -n $MIRROR ]] || die "no '$SUITE' source in /etc/apt/sources.list*: set MIRROR=http://<your Debian mirror>/debian"
fi
MIRROR=${MIRROR%/}
if [[ -z ${SECURITY_MIRROR:-} ]]; then
    SECURITY_MIRROR=$(apt_uri_for_suite "$SUITE-security")
    [[ -n $SECURITY_MIRROR ]] || SECURITY_MIRROR="${MIRROR%/*}/debian-security"
fi
SECURITY_MIRROR=${SECURITY_MIRROR%/}

# --- Work directory and cleanup --------------------------------------------------------
mkdir -p "$WORKDIR"
WORK=$(mktemp -d "$WORKDIR/cutover-image.XXXXXXXX")
ROOT=$WORK/rootfs
PARTIALS=()

unmount_below() { # unmount everything mounted under $1, deepest first
    local m
    awk -v w="$1/" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r m; do
            m=$(printf '%b' "$m") # /proc/self/mounts escapes spaces as \040
            umount "$m" 2>/dev/null || umount -l "$m" || true
        done
}

cleanup() {
    local rc=$? p
    set +e
    trap - EXIT INT TERM
    unmount_below "$WORK"
    for p in "${PARTIALS[@]}"; do rm -f "$p"; done
    if awk -v w="$WORK/" 'index($2, w) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
        warn "something is still mounted below $WORK: not deleting it"
    elif [[ $KEEP_WORK == 1 ]]; then
        printf 'build.sh: work directory kept: %s\n' "$WORK" >&2
    else
        rm -rf --one-file-system "$WORK"
    fi
    ((rc == 0)) || printf 'build.sh: FAILED (exit %d)\n' "$rc" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Run a command inside the image, with a clean environment.
in_root() {
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
        ${http_proxy:+http_proxy="$http_proxy"} ${https_proxy:+https_proxy="$https_proxy"} \
        chroot "$ROOT" "$@"
}

# Little-endian bytes of $1 on $2 bytes, for patching the GRUB boot sectors.
le_bytes() {
    local v=$1 n=$2 i out=""
    for ((i = 0; i < n; i++)); do out+=$(printf '\\x%02x' $(((v >> (8 * i)) & 255))); done
    printf '%b' "$out"
}

# --- 1. The cutover binary -------------------------------------------------------------
if [[ -n ${BIN:-} ]]; then
    log "cutover binary: $BIN"
    [[ -x $BIN ]] || die "BIN=$BIN is not an executable file"
else
    log "cargo build --release --locked (in $REPO)"
    owner=$(stat -c %U "$REPO")
    if [[ -n ${SUDO_USER:-} && $SUDO_USER != root && $owner == "$SUDO_USER" ]]; then
        # Build as the user who ran sudo, with their toolchain, so target/ stays theirs.
        # shellcheck disable=SC2016 # $1 is expanded by the inner bash
        runuser -u "$SUDO_USER" -- bash -lc 'cd "$1" && cargo build --release --locked' _ "$REPO" ||
            die "cargo build failed (or set BIN=path/to/cutover)"
    else
        (cd "$REPO" && PATH="$PATH:${HOME:-/root}/.cargo/bin" cargo build --release --locked) ||
            die "cargo build failed (or set BIN=path/to/cutover)"
    fi
    BIN=$REPO/target/release/cutover
fi
VERSION=$("$BIN" --version 2>/dev/null | awk '{ print $2 }') || true
[[ -n $VERSION ]] || die "$BIN --version did not answer: not a cutover binary for this machine?"
cp "$BIN" "$WORK/cutover"
if [[ $STRIP == 1 ]]; then
    if command -v objcopy >/dev/null 2>&1; then
        objcopy --strip-debug "$WORK/cutover"
    else
        warn "objcopy (binutils) not found: the binary keeps its debug info"
    fi
fi

# --- Outputs -----------------------------------------------------------------------------
OUTPUT=${1:-$SCRIPT_DIR/out/cutover-$VERSION-$SUITE-$ARCH.qcow2}
mkdir -p "$(dirname "$OUTPUT")"
OUTPUT=$(cd "$(dirname "$OUTPUT")" && pwd)/$(basename "$OUTPUT")
BASE=${OUTPUT%.qcow2}
[[ $BASE != "$OUTPUT" || " $FORMATS " != *" qcow2 "* ]] || die "OUTPUT must end in .qcow2"

log "building cutover $VERSION appliance: Debian $SUITE from $MIRROR (security: $SECURITY_MIRROR), disk $DISK_SIZE, in $WORK"

ROOT_UUID=$(cat /proc/sys/kernel/random/uuid)
ESP_ID=$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n' | tr a-f A-F)
ESP_UUID=${ESP_ID:0:4}-${ESP_ID:4:4}

# --- 2. debootstrap ------------------------------------------------------------------------
log "debootstrap --variant=minbase $SUITE"
debootstrap --variant=minbase --arch="$ARCH" --components=main --include=ca-certificates \
    "$SUITE" "$ROOT" "$MIRROR"

mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"
mount -t tmpfs -o mode=0755 tmpfs "$ROOT/run"
# No daemon starts inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
rm -f "$ROOT/etc/resolv.conf"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"

# --- 3. Base configuration (before the kernel: initramfs-tools reads fstab) -----------------
rm -f "$ROOT/etc/apt/sources.list"
cat >"$ROOT/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cat >"$ROOT/etc/fstab" <<EOF
# <file system>  <mount point>  <type>  <options>  <dump>  <pass>
UUID=$ROOT_UUID  /  ext4  errors=remount-ro  0  1
UUID=$ESP_UUID  /boot/efi  vfat  umask=0077,nofail  0  2
EOF
mkdir -p "$ROOT/boot/efi"
echo "$IMAGE_HOSTNAME" >"$ROOT/etc/hostname"
cat >"$ROOT/etc/hosts" <<EOF
127.0.0.1	localhost
127.0.1.1	$IMAGE_HOSTNAME
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
EOF
echo 'LANG=C.UTF-8' >"$ROOT/etc/default/locale"
mkdir -p "$ROOT/etc/initramfs-tools/conf.d"
echo 'RESUME=none' >"$ROOT/etc/initramfs-tools/conf.d/resume"
# Debian keeps /vmlinuz and /initrd.img pointing at the newest kernel; GRUB boots those.
printf 'do_symlinks = yes\nlink_in_boot = no\n' >"$ROOT/etc/kernel-img.conf"

log "apt-get update && full-upgrade (security and point-release updates)"
APT_OPTS=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
in_root apt-get -q update
in_root apt-get "${APT_OPTS[@]}" full-upgrade

log "downloading the signed boot loaders: ${EFI_DEBS[*]}"
mkdir -p "$ROOT/tmp/efi"
in_root sh -c "cd /tmp/efi && apt-get -q download ${EFI_DEBS[*]}"

log "apt-get install ${PACKAGES[*]} $EXTRA_PACKAGES"
# shellcheck disable=SC2086 # EXTRA_PACKAGES is a word list
in_root apt-get "${APT_OPTS[@]}" install --no-install-recommends "${PACKAGES[@]}" $EXTRA_PACKAGES
[[ -e $ROOT/vmlinuz && -e $ROOT/initrd.img ]] || die "no /vmlinuz or /initrd.img in the image after installing the kernel"

# --- 4. cutover ------------------------------------------------------------------------------
log "installing cutover $VERSION"
install -m 0755 "$WORK/cutover" "$ROOT/usr/bin/cutover"
in_root /usr/bin/cutover --version >/dev/null || die "the cutover binary does not run inside the image (built for another system?)"
units=()
for u in "$REPO"/systemd/*.service "$REPO"/systemd/*.timer; do
    [[ -e $u ]] || continue
    install -m 0644 "$u" "$ROOT/usr/lib/systemd/system/"
    units+=("$(basename "$u")")
done
[[ " ${units[*]} " == *" cutover.service "* ]] || die "no systemd/cutover.service in $REPO"
install -d "$ROOT/usr/share/doc/cutover"
install -m 0644 "$REPO/README.md" "$REPO/config.example.toml" "$ROOT/usr/share/doc/cutover/"

in_root getent group cutover >/dev/null || in_root groupadd --system cutover
in_root getent passwd cutover >/dev/null ||
    in_root useradd --system --gid cutover --home-dir /var/lib/cutover --no-create-home \
        --shell /usr/sbin/nologin --comment "cutover mail migration" cutover

install -d -m 0750 "$ROOT/etc/cutover"
install -m 0640 "$REPO/config.example.toml" "$ROOT/etc/cutover/cutover.toml"
# The example letters to the users ([notify]), English and Danish.
install -m 0640 "$REPO"/letters/*.eml "$ROOT/etc/cutover/"
printf 'EmailAddress,UserName,Password\nalice@example.com,alice,her-legacy-password\n' \
    >"$ROOT/etc/cutover/mailboxes.csv.example"
chmod 0640 "$ROOT/etc/cutover/mailboxes.csv.example"
in_root chown -R root:cutover /etc/cutover
install -d -m 0700 "$ROOT/var/lib/cutover"
in_root chown cutover:cutover /var/lib/cutover

# The daemon waits for its mailbox list instead of failing (and restarting every 30 s)
# while the appliance is not configured yet.
install -d "$ROOT/etc/systemd/system/cutover.service.d"
cat >"$ROOT/etc/systemd/system/cutover.service.d/10-appliance.conf" <<'EOF'
# Appliance image: start only once the mailbox list exists, so the unconfigured service
# does not fail and restart every 30 s. If `mailboxes` in /etc/cutover/cutover.toml points
# elsewhere, change the path here (or delete this file) and run `systemctl daemon-reload`.
[Unit]
ConditionPathExists=/etc/cutover/mailboxes.csv
EOF

# --- 5. Appliance services ---------------------------------------------------------------
log "network, first boot, SSH, updates"
cat >"$ROOT/etc/systemd/network/80-dhcp.network" <<'EOF'
# Appliance image: DHCP (v4 and v6/RA) on every Ethernet interface. For a static address,
# replace DHCP=yes by Address=192.0.2.10/24, Gateway=192.0.2.1 and DNS=192.0.2.53 lines.
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf.appliance"

cat >"$ROOT/usr/lib/systemd/system/appliance-ssh-keygen.service" <<'EOF'
[Unit]
Description=Generate this machine's own SSH host keys (the image ships none)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
EOF

cat >"$ROOT/usr/local/sbin/appliance-growfs" <<'EOF'
#!/bin/sh
# Grow the root partition and its ext4 file system to the end of the disk (after the
# virtual disk was enlarged). Does nothing when there is no room to grow.
set -eu
src=$(findmnt -no SOURCE /)
part=$(basename "$src")
disk=$(lsblk -no PKNAME "$src")
num=$(cat "/sys/class/block/$part/partition")
rc=0
growpart "/dev/$disk" "$num" || rc=$?
case $rc in
0) resize2fs "$src" ;;
1) echo "$src already fills /dev/$disk" ;;
*) exit "$rc" ;;
esac
EOF
chmod 0755 "$ROOT/usr/local/sbin/appliance-growfs"
cat >"$ROOT/usr/lib/systemd/system/appliance-growfs.service" <<'EOF'
[Unit]
Description=Grow the root file system to the whole disk
After=local-fs.target
Before=cutover.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/appliance-growfs

[Install]
WantedBy=multi-user.target
EOF

# Configuration handed over by the hypervisor: qemu's fw_cfg entries opt/cutover/<file>
# (qemu -fw_cfg name=opt/cutover/cutover.toml,file=...) are written to /etc/cutover at
# boot, before the daemon starts. A fleet of appliances (and image/test.sh) is configured
# this way without logging in to each. Nothing happens on other hypervisors.
cat >"$ROOT/usr/local/sbin/appliance-seed" <<'EOF'
#!/bin/sh
# Copy qemu fw_cfg entries opt/cutover/* into /etc/cutover (root:cutover 0640).
set -eu
modprobe qemu_fw_cfg 2>/dev/null || true
dir=/sys/firmware/qemu_fw_cfg/by_name/opt/cutover
[ -d "$dir" ] || { echo "no opt/cutover fw_cfg entries"; exit 0; }
for entry in "$dir"/*; do
    name=$(basename "$entry")
    case $name in *[!A-Za-z0-9._-]* | .*) echo "skipping fw_cfg entry $name"; continue ;; esac
    install -m 0640 -o root -g cutover "$entry/raw" "/etc/cutover/$name"
    echo "wrote /etc/cutover/$name from fw_cfg"
done
EOF
chmod 0755 "$ROOT/usr/local/sbin/appliance-seed"
cat >"$ROOT/usr/lib/systemd/system/appliance-seed.service" <<'EOF'
[Unit]
Description=Write the configuration given by the hypervisor (qemu fw_cfg) to /etc/cutover
DefaultDependencies=no
After=local-fs.target
Before=cutover.service cutover-sync.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/appliance-seed

[Install]
WantedBy=multi-user.target
EOF

in_root systemctl enable cutover.service appliance-ssh-keygen.service appliance-growfs.service appliance-seed.service \
    systemd-networkd.service systemd-resolved.service ssh.service chrony.service
for u in "${units[@]}"; do
    [[ $u == cutover.service ]] || in_root systemctl disable "$u" 2>/dev/null || true
done

# The image ships an empty /etc/machine-id (each VM makes its own: networkd's DHCP client
# ID derives from it), so systemd's first boot applies presets, which by default would
# enable every unit of the image not named in one (cutover-sync.timer, ssh.socket,
# chrony-wait...). This preset names them all: enabled now, or disabled now. Units of
# packages installed later are not named, so Debian enables them as usual. The
# first-boot wizard would prompt on the console for what is already set: masked.
in_root systemctl mask systemd-firstboot.service
install -d "$ROOT/etc/systemd/system-preset"
{
    echo "# Written by cutover's image/build.sh: the units of the image as they were built."
    in_root systemctl list-unit-files --no-legend --no-pager |
        awk '$2 == "enabled" { print "enable " $1 } $2 == "disabled" || $2 == "indirect" { print "disable " $1 }'
} >"$ROOT/etc/systemd/system-preset/10-cutover-appliance.preset"
grep -qx 'enable cutover.service' "$ROOT/etc/systemd/system-preset/10-cutover-appliance.preset" ||
    die "cutover.service is not enabled in the preset"
printf 'LANG=C.UTF-8\n' >"$ROOT/etc/locale.conf"

install -d -m 0755 "$ROOT/etc/ssh/sshd_config.d"
cat >"$ROOT/etc/ssh/sshd_config.d/10-appliance.conf" <<'EOF'
# Appliance image: keys only over SSH. Add yours to /root/.ssh/authorized_keys from the
# console first (or build with SSH_AUTHORIZED_KEYS=file).
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
EOF

cat >"$ROOT/etc/apt/apt.conf.d/20auto-upgrades" <<'EOF'
APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";
EOF
install -d -m 2755 "$ROOT/var/log/journal" # persistent journal
in_root chown root:systemd-journal /var/log/journal 2>/dev/null || true
ln -sfn /usr/share/zoneinfo/Etc/UTC "$ROOT/etc/localtime"
echo Etc/UTC >"$ROOT/etc/timezone"

cat >"$ROOT/etc/issue" <<'EOF'
cutover appliance (Debian GNU/Linux 12) \n \l
IPv4: \4   IPv6: \6

EOF
cat >"$ROOT/etc/motd" <<EOF

  cutover $VERSION appliance (Debian 12). First steps, as root:

  1. passwd                          # if not done yet; add SSH keys to /root/.ssh/authorized_keys
  2. nano /etc/cutover/cutover.toml  # [source], [upstream] (Office 365: auth = "xoauth2", oauth_*)
  3. cp /etc/cutover/mailboxes.csv.example /etc/cutover/mailboxes.csv && nano /etc/cutover/mailboxes.csv
     chown root:cutover /etc/cutover/* && chmod 0640 /etc/cutover/*
  4. runuser -u cutover -- cutover check     # logs in everywhere, changes nothing
  5. systemctl start cutover                 # the daemon (enabled: starts at boot once
     journalctl -u cutover -f                # mailboxes.csv exists); status:
     runuser -u cutover -- cutover status

  Docs: /usr/share/doc/cutover/README.md   Config reference: /usr/share/doc/cutover/config.example.toml
  Spool: /var/lib/cutover (grow the disk, reboot: / grows to fill it)

EOF

# --- 6. Root access ------------------------------------------------------------------------
GENERATED_PASSWORD=""
if [[ -z ${ROOT_PASSWORD:-} ]]; then
    ROOT_PASSWORD=$(head -c 15 /dev/urandom | base64 | tr -d '/+=')
    GENERATED_PASSWORD=$ROOT_PASSWORD
fi
printf 'root:%s\n' "$ROOT_PASSWORD" | in_root chpasswd
if [[ $EXPIRE_ROOT_PASSWORD == 1 ]]; then in_root passwd --expire root >/dev/null; fi
if [[ -n ${SSH_AUTHORIZED_KEYS:-} ]]; then
    install -d -m 0700 "$ROOT/root/.ssh"
    install -m 0600 "$SSH_AUTHORIZED_KEYS" "$ROOT/root/.ssh/authorized_keys"
fi

# --- 7. Boot loaders ---------------------------------------------------------------------------
log "GRUB for BIOS (core.img) and UEFI (shim + Debian's signed GRUB)"
mkdir -p "$ROOT/boot/grub/i386-pc"
cp "$ROOT"/usr/lib/grub/i386-pc/*.mod "$ROOT"/usr/lib/grub/i386-pc/*.lst "$ROOT/boot/grub/i386-pc/"
cat >"$ROOT/tmp/early.cfg" <<EOF
search.fs_uuid $ROOT_UUID root
set prefix=(\$root)/boot/grub
EOF
in_root grub-mkimage -O i386-pc -o /tmp/core.img -c /tmp/early.cfg -p /boot/grub \
    biosdisk part_gpt ext2 search_fs_uuid configfile normal
cp "$ROOT/tmp/core.img" "$ROOT/usr/lib/grub/i386-pc/boot.img" "$WORK/"
CMDLINE="root=UUID=$ROOT_UUID ro console=ttyS0,115200n8 console=tty0"
cat >"$ROOT/boot/grub/grub.cfg" <<EOF
# Written by cutover's image/build.sh. Static on purpose: it boots /vmlinuz and
# /initrd.img, which Debian's kernel packages keep pointing at the newest kernel
# (/vmlinuz.old: the one before), so kernel updates need no update-grub.
set default=0
set timeout=3
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
search --no-floppy --fs-uuid --set=root $ROOT_UUID
menuentry "Debian GNU/Linux 12 (cutover appliance)" {
	linux /vmlinuz $CMDLINE
	initrd /initrd.img
}
if [ -e /vmlinuz.old ]; then
	menuentry "Debian GNU/Linux 12 (cutover appliance), previous kernel" {
		linux /vmlinuz.old $CMDLINE
		initrd /initrd.img.old
	}
fi
EOF
for deb in "$ROOT"/tmp/efi/*.deb; do in_root dpkg-deb -x "/tmp/efi/$(basename "$deb")" /tmp/efi/x; done
mkdir -p "$WORK/efi"
for f in usr/lib/shim/shimx64.efi.signed usr/lib/shim/mmx64.efi.signed \
    usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed; do
    [[ -f $ROOT/tmp/efi/x/$f ]] || die "$f not found in ${EFI_DEBS[*]}"
    cp "$ROOT/tmp/efi/x/$f" "$WORK/efi/"
done
cat >"$WORK/esp-grub.cfg" <<EOF
search --no-floppy --fs-uuid --set=root $ROOT_UUID
set prefix=(\$root)/boot/grub
configfile \$prefix/grub.cfg
EOF

# --- 8. Checks and cleanup of the root file system -----------------------------------------------
log "checks"
[[ $(in_root systemctl is-enabled cutover.service) == enabled ]] || die "cutover.service is not enabled"
for u in "${units[@]}"; do
    [[ $u == cutover.service ]] && continue
    st=$(in_root systemctl is-enabled "$u" 2>/dev/null || true)
    [[ $st != enabled ]] || die "$u is enabled"
done
gid=$(in_root getent group cutover | cut -d: -f3)
[[ $(stat -c '%a %u %g' "$ROOT/etc/cutover/cutover.toml") == "640 0 $gid" ]] || die "wrong mode/owner on /etc/cutover/cutover.toml"
[[ $(stat -c '%a %u' "$ROOT/var/lib/cutover") == "700 $(in_root id -u cutover)" ]] || die "wrong mode/owner on /var/lib/cutover"

log "cleaning the root file system"
in_root apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/tmp/* "$ROOT"/var/tmp/*
rm -f "$ROOT"/etc/ssh/ssh_host_* "$ROOT/var/lib/systemd/random-seed" \
    "$ROOT"/var/cache/debconf/*-old "$ROOT"/var/lib/dpkg/*-old "$ROOT/root/.bash_history"
: >"$ROOT/etc/machine-id" # a new one at first boot, per VM
[[ -L $ROOT/var/lib/dbus/machine-id ]] || rm -f "$ROOT/var/lib/dbus/machine-id"
find "$ROOT/var/log" -type f -exec truncate -s 0 {} +
rm -f "$ROOT/usr/sbin/policy-rc.d"
mv -f "$ROOT/etc/resolv.conf.appliance" "$ROOT/etc/resolv.conf"
unmount_below "$ROOT"
if awk -v w="$ROOT/" 'index($2, w) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
    die "could not unmount everything below $ROOT"
fi

# --- 9. File systems and disk ----------------------------------------------------------------------
used_mib=$(du -sx --block-size=1M "$ROOT" | cut -f1)
((used_mib * 13 / 10 + 256 < ROOT_SECTORS / 2048)) ||
    die "DISK_SIZE=$DISK_SIZE is too small for ${used_mib} MiB of root file system"
log "ext4 root file system ($((ROOT_SECTORS / 2048)) MiB, ${used_mib} MiB used) with mkfs.ext4 -d"
truncate -s $((ROOT_SECTORS * 512)) "$WORK/root.ext4"
mkfs.ext4 -q -F -L cutover-root -U "$ROOT_UUID" -d "$ROOT" "$WORK/root.ext4"

log "EFI system partition (FAT32, mtools)"
mkfs.vfat -F 32 -s 1 -n ESP -i "$ESP_ID" -C "$WORK/esp.fat" $((ESP_SECTORS / 2)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$WORK/esp.fat" ::/EFI ::/EFI/BOOT ::/EFI/debian
mcopy -i "$WORK/esp.fat" "$WORK/efi/shimx64.efi.signed" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$WORK/esp.fat" "$WORK/efi/mmx64.efi.signed" ::/EFI/BOOT/mmx64.efi
mcopy -i "$WORK/esp.fat" "$WORK/efi/grubx64.efi.signed" ::/EFI/BOOT/grubx64.efi
mcopy -i "$WORK/esp.fat" "$WORK/esp-grub.cfg" ::/EFI/BOOT/grub.cfg
mcopy -i "$WORK/esp.fat" "$WORK/esp-grub.cfg" ::/EFI/debian/grub.cfg

log "GPT disk ($DISK_SIZE)"
DISK=$WORK/disk.raw
truncate -s "$DISK_BYTES" "$DISK"
sfdisk --quiet --no-reread --no-tell-kernel "$DISK" <<EOF
label: gpt
unit: sectors
first-lba: 2048
start=$BIOS_START, size=$BIOS_SECTORS, type=21686148-6449-6E6F-744E-656564454649, name="bios-boot"
start=$ESP_START, size=$ESP_SECTORS, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp"
start=$ROOT_START, size=$ROOT_SECTORS, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="root"
EOF
# BIOS: GRUB's boot.img in the protective MBR (code only, the partition table stays), told
# where core.img starts (the LBA at 0x5c); core.img in partition 1, its first sector told
# where the rest of it is (the blocklist's start at 0x1f4). grub-install does the same on
# a block device; here it is done on the file.
core_sectors=$((($(stat -c %s "$WORK/core.img") + 511) / 512))
((core_sectors <= BIOS_SECTORS)) || die "core.img is larger than the BIOS boot partition"
cmp -s -n 8 -i 500:0 "$WORK/core.img" <(le_bytes 2 8) ||
    die "unexpected core.img: its blocklist does not start at sector 2"
le_bytes $((BIOS_START + 1)) 8 | dd of="$WORK/core.img" bs=1 seek=$((0x1f4)) conv=notrunc status=none
le_bytes "$BIOS_START" 8 | dd of="$WORK/boot.img" bs=1 seek=$((0x5c)) conv=notrunc status=none
dd if="$WORK/boot.img" of="$DISK" bs=440 count=1 conv=notrunc status=none
dd if="$WORK/core.img" of="$DISK" bs=512 seek="$BIOS_START" conv=notrunc status=none
dd if="$WORK/esp.fat" of="$DISK" bs=512 seek="$ESP_START" conv=notrunc,sparse status=none
dd if="$WORK/root.ext4" of="$DISK" bs=1M seek=$((ROOT_START / 2048)) conv=notrunc,sparse status=none
rm -f "$WORK/root.ext4"

# --- 10. Outputs -------------------------------------------------------------------------------
log "writing outputs"
written=()
publish() { # publish SRC DEST: atomically, owned by whoever ran sudo
    PARTIALS+=("$2.partial")
    mv -f "$1" "$2.partial"
    if [[ -n ${SUDO_UID:-} ]]; then chown "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$2.partial"; fi
    mv -f "$2.partial" "$2"
    written+=("$2")
}
for f in $FORMATS; do
    case $f in
    qcow2)
        opts=(-f raw -O qcow2)
        [[ $COMPRESS == 1 ]] && opts+=(-c)
        qemu-img convert "${opts[@]}" "$DISK" "$WORK/out.qcow2"
        publish "$WORK/out.qcow2" "$OUTPUT"
        ;;
    vmdk)
        qemu-img convert -f raw -O vmdk -o adapter_type=lsilogic,subformat=streamOptimized "$DISK" "$WORK/out.vmdk"
        publish "$WORK/out.vmdk" "$BASE.vmdk"
        ;;
    vhdx)
        qemu-img convert -f raw -O vhdx -o subformat=dynamic "$DISK" "$WORK/out.vhdx"
        publish "$WORK/out.vhdx" "$BASE.vhdx"
        ;;
    raw)
        cp --sparse=always "$DISK" "$WORK/out.raw"
        publish "$WORK/out.raw" "$BASE.raw"
        ;;
    tar)
        # The root file system as a tarball (boot loaders and partitions not included).
        tar --numeric-owner --xattrs --xattrs-include='*' --acls -C "$ROOT" -czf "$WORK/out.tar.gz" .
        publish "$WORK/out.tar.gz" "$BASE.rootfs.tar.gz"
        ;;
    esac
done
if [[ -n $GENERATED_PASSWORD ]]; then
    (
        umask 077
        printf '%s\n' "$GENERATED_PASSWORD" >"$WORK/pw"
    )
    publish "$WORK/pw" "$BASE.root-password"
fi

log "done: cutover $VERSION, Debian $SUITE, $DISK_SIZE virtual disk"
for f in "${written[@]}"; do
    printf '  %-8s %s\n' "$(du -h --apparent-size "$f" | cut -f1)" "$f"
done
if [[ -n $GENERATED_PASSWORD ]]; then
    printf '  root password (console; change forced at first login: %s): in %s\n' \
        "$([[ $EXPIRE_ROOT_PASSWORD == 1 ]] && echo yes || echo no)" "$BASE.root-password"
fi
