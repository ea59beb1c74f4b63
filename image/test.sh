#!/usr/bin/env bash
# Boot test of the appliance image: builds it (or takes a built one), boots it under
# qemu-system-x86_64 with software emulation (TCG) and user-mode networking, hands it a
# configuration over qemu's fw_cfg (the image's appliance-seed.service writes it to
# /etc/cutover), forwards the status page to 127.0.0.1, waits until /healthz answers,
# reads /api/status and powers the VM off. Every wait is bounded; qemu is stopped by its
# PID. See image/README.md ("Boot test").
#
#   sudo image/test.sh                       # builds the image first (image/build.sh)
#   IMAGE=out/cutover.qcow2 image/test.sh    # boots a built one (not modified: an overlay)
#
# Environment (all optional):
#   IMAGE=path        the qcow2 to boot; unset: built with image/build.sh (needs root)
#   BIN=path          the cutover binary for the build (default: build.sh's release
#                     build), and on this machine to hash the status page's password
#                     (default: target/release/cutover, else target/debug/cutover)
#   ACCEL=tcg         qemu accelerator: tcg (software, the default) or kvm
#   BOOT_TIMEOUT=900  seconds for the VM to boot and /healthz to answer
#   KEEP=0            1: keep the work directory (console log, overlay)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ACCEL=${ACCEL:-tcg}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-900}
KEEP=${KEEP:-0}
STOP_TIMEOUT=120

log() { printf '==> [%5ds] %s\n' "$SECONDS" "$*" >&2; }
die() {
    printf 'image/test.sh: %s\n' "$*" >&2
    exit 1
}

command -v qemu-system-x86_64 >/dev/null ||
    die "qemu-system-x86_64 is missing: apt-get install -y qemu-system-x86 qemu-utils"
command -v qemu-img >/dev/null || die "qemu-img is missing: apt-get install -y qemu-utils"
command -v curl >/dev/null || die "curl is missing"
command -v python3 >/dev/null || die "python3 is missing (QMP and JSON)"

# The binary the image is built with: BIN if given, else build.sh's release build.
IMAGE_BIN=${BIN:-}
if [[ -z ${BIN:-} ]]; then
    for b in "$REPO/target/release/cutover" "$REPO/target/debug/cutover"; do
        [[ -x $b ]] && BIN=$b && break
    done
fi
[[ -n ${BIN:-} && -x $BIN ]] || die "no cutover binary: build one (cargo build --release) or set BIN="
BIN=$(realpath "$BIN")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cutover-image-test.XXXXXX")
QEMU_PID=
cleanup() {
    if [[ -n $QEMU_PID ]] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill -TERM "$QEMU_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$QEMU_PID" 2>/dev/null || true
    fi
    if [[ $KEEP == 1 ]]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# --- The image ---------------------------------------------------------------------------
if [[ -z ${IMAGE:-} ]]; then
    [[ $(id -u) == 0 ]] || die "building the image needs root (or give IMAGE=)"
    log "building the image (image/build.sh${IMAGE_BIN:+, BIN=$IMAGE_BIN})"
    IMAGE="$WORK/cutover.qcow2"
    BIN="$IMAGE_BIN" COMPRESS=0 EXPIRE_ROOT_PASSWORD=0 "$REPO/image/build.sh" "$IMAGE" >"$WORK/build.log" 2>&1 ||
        { tail -n 40 "$WORK/build.log" >&2; die "image/build.sh failed (log above)"; }
    log "built $(du -h "$IMAGE" | cut -f1) in ${SECONDS}s"
fi
[[ -r $IMAGE ]] || die "cannot read IMAGE=$IMAGE"
IMAGE=$(realpath "$IMAGE")
# The image itself stays as built: the VM writes to an overlay.
qemu-img create -q -f qcow2 -b "$IMAGE" -F qcow2 "$WORK/disk.qcow2"

# --- The configuration, handed over by fw_cfg -----------------------------------------
# The sources are unreachable on purpose (port 9 at the host, 10.0.2.2 in the VM): the
# test is of the appliance (boot, units, seed, daemon, page), not of a migration.
PASSWORD="boot-test-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
cat >"$WORK/cutover.toml" <<EOF
mailboxes = "/etc/cutover/mailboxes.csv"
[source]
host = "10.0.2.2"
port = 9
tls = "none"
allow_plaintext = true
admin_user = "admin"
admin_password_file = "/etc/cutover/source-password"
[upstream]
host = "10.0.2.2"
port = 9
tls = "none"
allow_plaintext = true
admin_user = "admin"
admin_password_file = "/etc/cutover/source-password"
[web]
listen = "0.0.0.0:8080"
password_file = "/etc/cutover/web-password"
[fleet]
shard = "0/1"
EOF
printf 'EmailAddress,UserName,Password\nboot.test@example.org,boot.test,\n' >"$WORK/mailboxes.csv"
printf 'not-a-real-password\n' >"$WORK/source-password"
# The page's password hash, made here (the VM has no terminal to type it into).
sed -e "s|/etc/cutover/|$WORK/|" "$WORK/cutover.toml" >"$WORK/host.toml"
printf '%s\n' "$PASSWORD" | "$BIN" --config "$WORK/host.toml" web-password >/dev/null 2>&1 ||
    die "cutover web-password failed"
[[ -s $WORK/web-password ]] || die "cutover web-password wrote nothing"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
FW=()
for f in cutover.toml mailboxes.csv source-password web-password; do
    FW+=(-fw_cfg "name=opt/cutover/$f,file=$WORK/$f")
done

# --- Boot ----------------------------------------------------------------------------------
log "booting under qemu ($ACCEL), status page at https://127.0.0.1:$PORT"
qemu-system-x86_64 -accel "$ACCEL" -m 1024 -smp 2 \
    -display none -monitor none -serial "file:$WORK/console.log" \
    -qmp "unix:$WORK/qmp.sock,server=on,wait=off" \
    -drive "file=$WORK/disk.qcow2,if=virtio,format=qcow2" \
    -nic "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:$PORT-:8080" \
    "${FW[@]}" >"$WORK/qemu.log" 2>&1 &
QEMU_PID=$!
BOOT_START=$SECONDS

healthy=0
while ((SECONDS - BOOT_START < BOOT_TIMEOUT)); do
    kill -0 "$QEMU_PID" 2>/dev/null || { cat "$WORK/qemu.log" >&2; die "qemu exited during boot"; }
    code=$(curl -sk -o "$WORK/healthz.json" -w '%{http_code}' --max-time 5 "https://127.0.0.1:$PORT/healthz" || true)
    if [[ $code == 200 ]]; then
        healthy=1
        break
    fi
    sleep 5
done
if [[ $healthy != 1 ]]; then
    echo "--- last console lines ---" >&2
    tail -n 60 "$WORK/console.log" >&2 || true
    die "/healthz did not answer 200 within ${BOOT_TIMEOUT}s"
fi
log "/healthz answered $(cat "$WORK/healthz.json") after $((SECONDS - BOOT_START))s"

curl -sfk --max-time 20 -u "admin:$PASSWORD" -o "$WORK/status.json" "https://127.0.0.1:$PORT/api/status" ||
    die "/api/status did not answer"
python3 - "$WORK/status.json" <<'EOF' || die "/api/status is not what the configuration says"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["mailboxes"] == 1, f"mailboxes: {s['mailboxes']}"
assert s["fleet"]["shard"] == "0/1", f"fleet: {s.get('fleet')}"
print(f"/api/status: phase {s['phase']}, {s['mailboxes']} mailbox, shard {s['fleet']['shard']}")
EOF
code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 10 "https://127.0.0.1:$PORT/api/status" || true)
[[ $code == 401 ]] || die "/api/status without the password answered $code, not 401"

# --- Power off -------------------------------------------------------------------------------
qmp() { # sends one QMP command
    python3 - "$WORK/qmp.sock" "$1" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
for cmd in ("qmp_capabilities", sys.argv[2]):
    f.write(json.dumps({"execute": cmd}) + "\n")
    f.flush()
    while "return" not in (r := json.loads(f.readline())) and "error" not in r:
        pass
EOF
}
log "powering off (ACPI)"
STOP_START=$SECONDS
qmp system_powerdown || true
while kill -0 "$QEMU_PID" 2>/dev/null && ((SECONDS - STOP_START < STOP_TIMEOUT)); do sleep 1; done
if kill -0 "$QEMU_PID" 2>/dev/null; then
    tail -n 30 "$WORK/console.log" >&2 || true
    die "the VM did not power off within ${STOP_TIMEOUT}s"
fi
wait "$QEMU_PID" || true
QEMU_PID=
grep -q 'reboot: Power down' "$WORK/console.log" || log "note: no 'Power down' line on the console"
log "boot test passed: healthy after $((STOP_START - BOOT_START))s, off after $((SECONDS - STOP_START))s, ${SECONDS}s in all"
