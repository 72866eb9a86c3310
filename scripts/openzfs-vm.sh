#!/bin/bash
# openzfs-vm.sh - a qemu virtual machine running real OpenZFS, for the `openzfs` test tier.
#
# Our machines cannot load kernel modules, so the host only has zfs-fuse (no encryption, resume
# tokens, bookmarks, `send -nvP`). This script builds a Debian 12 guest whose kernel has the OpenZFS
# module (zfs-dkms from bookworm-backports), boots it under qemu and makes its sshd reachable on a
# free loopback port. zfsutils-linux is never installed on the host: it would remove zfs-fuse.
#
# Usage: openzfs-vm.sh COMMAND
#   deps    install the host packages (apt-get, no recommends) when a tool is missing
#   build   build the guest image into the cache unless it is there already
#   boot    start the VM from the cached image (fresh overlay and pool disks every time)
#   wait    wait until `zfs version` answers over ssh
#   up      deps + build + boot + wait
#   stop    end the VM, remove its overlay and disks
#   ssh     run a command in the guest: openzfs-vm.sh ssh zpool status
#   info    print what a client needs to reach the VM
#
# Environment:
#   OZVM_DIR        cache of built images (default /var/cache/middlewared-plugin/openzfs-vm)
#   OZVM_RUN        files of one running VM (default $OZVM_DIR/run); one VM per run directory
#   OZVM_SUITE      bookworm-backports (OpenZFS 2.3.x, default) or bookworm (2.1.x)
#   OZVM_MIRROR, OZVM_SECURITY_MIRROR   Debian archives for the guest (default deb.debian.org)
#   OZVM_DISKS      number of pool disks, >= 2 (default 3); OZVM_DISK_SIZE (default 2G)
#   OZVM_NETCAT_PORTS  extra ports forwarded host 127.0.0.1:P -> guest :P (default 4)
#   OZVM_MEM        guest memory in MiB (default 2048); OZVM_CPUS (default: host cores)
#   OZVM_ACCEL      auto (default: kvm only with kvm_intel/kvm_amd), kvm or tcg
#   OZVM_WAIT_S     seconds `wait` allows for the boot (default 300)
#   OZVM_OWNER_PID  when set, the VM is killed once that process is gone (test runner crash)
#
# Files in $OZVM_RUN after `up`: port, netcat_ports, id_ed25519 (root's key), host_key.pub
# ("ssh-ed25519 AAAA..."), known_hosts, ssh_config (Host ozvm, ControlMaster), disks (one
# /dev/disk/by-id path per line), zfs_version, qemu.pid, console.log.
#
# Measured on 2 cores with software emulation: build ~4.5 min (mostly the dkms build of zfs),
# boot until zfs answers ~35 s (both take two or three times as long on a loaded machine).
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
CACHE=${OZVM_DIR:-/var/cache/middlewared-plugin/openzfs-vm}
RUN=${OZVM_RUN:-$CACHE/run}
SUITE=${OZVM_SUITE:-bookworm-backports}
MIRROR=${OZVM_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${OZVM_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
NDISKS=${OZVM_DISKS:-3}
DISK_SIZE=${OZVM_DISK_SIZE:-2G}
NETCAT_PORTS=${OZVM_NETCAT_PORTS:-4}
MEM=${OZVM_MEM:-2048}
CPUS=${OZVM_CPUS:-$(nproc)}
ACCEL=${OZVM_ACCEL:-auto}
WAIT_S=${OZVM_WAIT_S:-300}
ROOT_LABEL=ozvmroot
# Packages the guest gets besides its base system: kernel + headers for dkms, OpenZFS, sshd, and
# what replication runs on the remote end (python3 for the netcat helper, compressors, mbuffer).
GUEST_PACKAGES=systemd-sysv,udev,kmod,iproute2,procps,openssh-server,linux-image-amd64,linux-headers-amd64
GUEST_PACKAGES+=,dkms,zfs-dkms,zfsutils-linux,python3,lz4,pigz,plzip,xz-utils,xzdec,mbuffer
# Building needs the root fs directory (~1.3 GB) and the image made from it at the same time.
BUILD_MB=4096
BOOT_MB=1024
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

log() { printf '[openzfs-vm %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'openzfs-vm: error: %s\n' "$*" >&2; exit 1; }

# The image is keyed by this file's content: any change to the recipe builds a new image.
image_key() {
  local sum
  sum=$(sha256sum <"$SELF")
  echo "$SUITE-${sum:0:16}"
}
IMAGE=$CACHE/images/$(image_key)

free_mb() {
  local dir=$1
  while [ ! -d "$dir" ]; do dir=$(dirname "$dir"); done
  df -Pm "$dir" | awk 'NR == 2 { print $4 }'
}

need_space() {
  local dir=$1 mb=$2 avail
  avail=$(free_mb "$dir")
  [ "$avail" -ge "$mb" ] || die "not enough disk space in $dir: ${avail} MB free, ${mb} MB needed"
}

# ---- host tools -------------------------------------------------------------------------------

# command -> Debian package providing it
declare -A TOOL_PACKAGE=(
  [qemu-system-x86_64]=qemu-system-x86 [qemu-img]=qemu-utils [mmdebstrap]=mmdebstrap
  [mke2fs]=e2fsprogs [ssh]=openssh-client [ssh-keygen]=openssh-client [ss]=iproute2
  [flock]=util-linux [findmnt]=util-linux
)

missing_packages() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || echo "${TOOL_PACKAGE[$tool]}"
  done | sort -u
}

# Install what is missing for the given tools, or fail saying what is missing.
ensure_tools() {
  local missing
  missing=$(missing_packages "$@")
  [ -n "$missing" ] || return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    die "missing host packages: $(echo $missing) (install them as root with apt-get)"
  fi
  log "installing host packages: $(echo $missing)"
  apt-get update -q >&2 || die "apt-get update failed"
  # shellcheck disable=SC2086 # one package per word
  apt-get install -y -q --no-install-recommends $missing >&2 || die "apt-get install failed: $(echo $missing)"
  missing=$(missing_packages "$@")
  [ -z "$missing" ] || die "still missing after apt-get install: $(echo $missing)"
}

cmd_deps() {
  ensure_tools "${!TOOL_PACKAGE[@]}"
  # mmdebstrap verifies the Debian archive with this keyring (absent on non-Debian hosts)
  if [ ! -f /usr/share/keyrings/debian-archive-keyring.gpg ]; then
    [ "$(id -u)" -eq 0 ] || die "missing host package: debian-archive-keyring"
    apt-get install -y -q --no-install-recommends debian-archive-keyring >&2 \
      || die "apt-get install failed: debian-archive-keyring"
  fi
}

# ---- build ------------------------------------------------------------------------------------

# mmdebstrap setup hook (runs as `openzfs-vm.sh _setup ROOT`): take every OpenZFS package from
# backports and everything else from bookworm.
cmd__setup() {
  local root=$1
  [ "$SUITE" = bookworm-backports ] || return 0
  mkdir -p "$root/etc/apt/preferences.d"
  printf 'Package: *zfs* *zpool* libnvpair* libuutil*\nPin: release n=bookworm-backports\nPin-Priority: 990\n' \
    >"$root/etc/apt/preferences.d/zfs-backports"
}

# mmdebstrap customize hook (runs as `openzfs-vm.sh _customize ROOT BUILD_DIR`).
cmd__customize() {
  local root=$1 out=$2 kver
  kver=$(find "$root/lib/modules" -mindepth 1 -maxdepth 1 -name '*-amd64' -printf '%f\n' | sort -V | tail -1)
  [ -n "$kver" ] || die "no guest kernel in the root fs"
  # The zfs-dkms postinst builds for the running (host) kernel; build for the guest's explicitly.
  chroot "$root" dkms autoinstall -k "$kver" >&2
  compgen -G "$root/lib/modules/$kver/updates/dkms/zfs.ko*" >/dev/null || die "dkms did not build zfs.ko for $kver"
  chroot "$root" depmod "$kver"
  # Every boot has blank pool disks, so there is nothing to import or mount: without those units
  # nothing waits for udev to settle, and sshd need not wait for the module (~15 s under emulation)
  # which loads alongside the rest of the boot instead.
  chroot "$root" systemctl mask zfs-load-module.service zfs-import-cache.service zfs-import-scan.service \
    zfs-mount.service zfs-share.service e2scrub_reap.service >&2
  printf '[Unit]\nDefaultDependencies=no\n[Service]\nType=oneshot\nExecStart=/usr/sbin/modprobe zfs\n[Install]\nWantedBy=multi-user.target\n' \
    >"$root/etc/systemd/system/ozvm-zfs-module.service"
  chroot "$root" systemctl enable ozvm-zfs-module.service >&2
  echo ozvm >"$root/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 ozvm\n' >"$root/etc/hosts"
  echo "LABEL=$ROOT_LABEL / ext4 defaults,noatime 0 1" >"$root/etc/fstab"

  # root logs in with our key only; the host key is ours too, so clients can pin it
  install -d -m 700 "$root/root/.ssh"
  install -m 600 "$out/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
  rm -f "$root"/etc/ssh/ssh_host_*
  install -m 600 "$out/ssh_host_ed25519_key" "$root/etc/ssh/ssh_host_ed25519_key"
  install -m 644 "$out/ssh_host_ed25519_key.pub" "$root/etc/ssh/ssh_host_ed25519_key.pub"
  printf '%s\n' 'HostKey /etc/ssh/ssh_host_ed25519_key' 'PermitRootLogin prohibit-password' \
    'PasswordAuthentication no' 'KbdInteractiveAuthentication no' 'UseDNS no' \
    'MaxSessions 64' 'MaxStartups 64:30:128' >"$root/etc/ssh/sshd_config.d/ozvm.conf"

  printf '[Match]\nName=e*\n[Network]\nDHCP=ipv4\n' >"$root/etc/systemd/network/10-dhcp.network"
  chroot "$root" systemctl enable systemd-networkd >&2
  # the guest must not reach out to the internet on its own
  chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer >&2

  chroot "$root" python3 -c 'import sys; assert sys.version_info >= (3, 9)'
  chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' zfsutils-linux zfs-dkms linux-image-amd64 >"$out/manifest"
  cp "$root/boot/vmlinuz-$kver" "$out/vmlinuz"
  cp "$root/boot/initrd.img-$kver" "$out/initrd.img"
}

# A killed mmdebstrap may leave /proc, /sys or /dev mounted in its root fs: unmount them first, and
# never let rm cross into another file system.
remove_tree() {
  local dir=$1 m
  [ -e "$dir" ] || return 0
  findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0, d) == 1' | sort -r | while read -r m; do
    umount -l "$m" || true
  done
  rm -rf --one-file-system "$dir"
}

build_rootfs() {
  local tmp=$1
  remove_tree "$tmp/rootfs"
  mmdebstrap --variant=minbase --mode=root \
    --aptopt='APT::Install-Recommends "false"' --aptopt='Acquire::Retries "5"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --include="$GUEST_PACKAGES" \
    --setup-hook="bash '$SELF' _setup \"\$1\"" \
    --customize-hook="bash '$SELF' _customize \"\$1\" '$tmp'" \
    bookworm "$tmp/rootfs" \
    "deb $MIRROR bookworm main contrib" \
    "deb $MIRROR bookworm-updates main contrib" \
    "deb $SECURITY_MIRROR bookworm-security main contrib" \
    "deb $MIRROR bookworm-backports main contrib" >&2
}

cmd_build() {
  if [ -f "$IMAGE/root.img" ]; then
    log "cached image: $IMAGE"
    return 0
  fi
  ensure_tools mmdebstrap mke2fs ssh-keygen flock findmnt
  [ "$(id -u)" -eq 0 ] || die "building the image needs root (mmdebstrap --mode=root, dkms in a chroot)"
  mkdir -p "$CACHE/images"
  # Another build of the same image may be running: wait for it, then reuse its result. The lock's
  # descriptor is closed again so that qemu, started later by `up`, does not inherit the lock.
  exec 9>"$CACHE/build.lock"
  flock 9
  build_locked
  exec 9>&-
}

build_locked() {
  if [ -f "$IMAGE/root.img" ]; then
    log "cached image: $IMAGE"
    return 0
  fi
  local stale
  for stale in "$CACHE"/images/*.tmp; do remove_tree "$stale"; done   # from a killed build (we hold the lock)
  need_space "$CACHE" "$BUILD_MB"
  local tmp=$IMAGE.tmp try start=$SECONDS
  mkdir -p "$tmp"
  ssh-keygen -q -t ed25519 -N '' -C root@ozvm-client -f "$tmp/id_ed25519"
  ssh-keygen -q -t ed25519 -N '' -C ozvm -f "$tmp/ssh_host_ed25519_key"
  log "building the guest root fs ($SUITE, from $MIRROR); this takes about 5 minutes"
  for try in 1 2 3; do
    build_rootfs "$tmp" && break
    [ "$try" -lt 3 ] || die "building the guest root fs failed 3 times (see the output above)"
    log "root fs build failed (try $try of 3), retrying in 15 s"
    sleep 15
  done
  log "making the ext4 image"
  mke2fs -q -t ext4 -L "$ROOT_LABEL" -d "$tmp/rootfs" "$tmp/root.img" 6G
  remove_tree "$tmp/rootfs"
  mv "$tmp" "$IMAGE"
  # keep one image: older ones were built from older versions of this script
  for stale in "$CACHE"/images/*; do [ "$stale" = "$IMAGE" ] || remove_tree "$stale"; done
  log "image built in $((SECONDS - start)) s: $IMAGE ($(tr '\n' ' ' <"$IMAGE/manifest"))"
}

# ---- boot -------------------------------------------------------------------------------------

qemu_pid() {
  local pid
  pid=$(cat "$RUN/qemu.pid" 2>/dev/null) || return 1
  # only a qemu we started: the pid file may be stale and its number reused
  [ -n "$pid" ] && grep -qa qemu-system "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

# KVM helps only with a real VMX/SVM backend. Some hosts expose /dev/kvm through kvm_pvm, where
# creating a VM works but a stock Debian kernel hangs early in boot; use software emulation there.
accel_args() {
  case $ACCEL in
    kvm) echo "-accel kvm -cpu host" ;;
    tcg) echo "-accel tcg,thread=multi -cpu max" ;;
    auto)
      if [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then
        echo "-accel kvm -cpu host"
      else
        echo "-accel tcg,thread=multi -cpu max"
      fi ;;
    *) die "OZVM_ACCEL must be auto, kvm or tcg, not '$ACCEL'" ;;
  esac
}

port_free() { [ -z "$(ss -Hltn "sport = :$1")" ]; }

# A random base port with NETCAT_PORTS free ports after it (ssh = base, netcat = the rest).
pick_ports() {
  local base p ok
  for _ in $(seq 1 50); do
    base=$((20000 + RANDOM % 30000))
    ok=1
    for p in $(seq "$base" $((base + NETCAT_PORTS))); do port_free "$p" || { ok=0; break; }; done
    [ "$ok" -eq 1 ] && { echo "$base"; return 0; }
  done
  die "found no free loopback ports"
}

write_client_files() {
  local port=$1
  echo "$port" >"$RUN/port"
  seq $((port + 1)) $((port + NETCAT_PORTS)) >"$RUN/netcat_ports"
  echo "[127.0.0.1]:$port $(cat "$RUN/host_key.pub")" >"$RUN/known_hosts"
  cat >"$RUN/ssh_config" <<EOF
Host ozvm
  HostName 127.0.0.1
  Port $port
  User root
  IdentityFile $RUN/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $RUN/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
  ConnectTimeout 10
  ServerAliveInterval 15
  # Commands ride the master connection that `wait` starts (~0.07 s each instead of ~0.8 s under
  # emulation). Clients never become masters themselves: a master forked by a client would keep
  # that client's output pipes open and make its caller wait for the end of the session.
  ControlMaster no
  ControlPath $RUN/ctl
EOF
}

# Kills the VM when the process that asked for it is gone, so a crashed test run leaves nothing.
start_watchdog() {
  local owner=$1 pid=$2
  setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 2; done
    grep -qa qemu-system "/proc/$2/cmdline" 2>/dev/null && kill "$2"' _ "$owner" "$pid" \
    </dev/null >/dev/null 2>&1 &
}

cmd_boot() {
  accel_args >/dev/null
  ensure_tools qemu-system-x86_64 qemu-img ssh ss
  [ -f "$IMAGE/root.img" ] || die "no image at $IMAGE: run '$0 build' first"
  mkdir -p "$RUN"
  if qemu_pid >/dev/null; then cmd_stop; fi
  need_space "$RUN" "$BOOT_MB"
  [ "$NDISKS" -ge 2 ] || die "OZVM_DISKS must be at least 2"

  install -m 600 "$IMAGE/id_ed25519" "$RUN/id_ed25519"
  cut -d' ' -f1,2 "$IMAGE/ssh_host_ed25519_key.pub" >"$RUN/host_key.pub"
  rm -f "$RUN/root.qcow2" "$RUN"/disk*.img "$RUN/console.log" "$RUN/qemu.pid" "$RUN/zfs_version"
  # the cached image stays untouched: the guest writes to a throw-away overlay
  qemu-img create -q -f qcow2 -b "$IMAGE/root.img" -F raw "$RUN/root.qcow2"
  local disks=() i
  : >"$RUN/disks"
  for i in $(seq 1 "$NDISKS"); do
    truncate -s "$DISK_SIZE" "$RUN/disk$i.img"
    disks+=(-drive "file=$RUN/disk$i.img,if=none,id=d$i,format=raw,cache=unsafe"
            -device "virtio-blk-pci,drive=d$i,serial=zfs$i")
    echo "/dev/disk/by-id/virtio-zfs$i" >>"$RUN/disks"
  done

  local accel port fwd try p
  read -r -a accel <<<"$(accel_args)"
  for try in 1 2 3 4 5; do
    port=$(pick_ports)
    fwd="hostfwd=tcp:127.0.0.1:$port-:22"
    for p in $(seq $((port + 1)) $((port + NETCAT_PORTS))); do fwd+=",hostfwd=tcp:127.0.0.1:$p-:$p"; done
    # root is found by label: the pool disks are virtio too and may come first
    if qemu-system-x86_64 "${accel[@]}" -m "$MEM" -smp "$CPUS" -nodefaults -display none \
        -kernel "$IMAGE/vmlinuz" -initrd "$IMAGE/initrd.img" \
        -append "root=LABEL=$ROOT_LABEL rw console=ttyS0 systemd.show_status=0 mitigations=off" \
        -drive "file=$RUN/root.qcow2,if=virtio,format=qcow2,cache=unsafe" \
        "${disks[@]}" \
        -netdev "user,id=n0,$fwd" -device virtio-net-pci,netdev=n0 \
        -serial "file:$RUN/console.log" -pidfile "$RUN/qemu.pid" -daemonize 2>"$RUN/qemu.err"; then
      break
    fi
    # a port taken between our check and qemu's bind makes qemu exit at once: try other ports
    grep -q 'host forwarding' "$RUN/qemu.err" && [ "$try" -lt 5 ] || die "qemu failed: $(cat "$RUN/qemu.err")"
    log "port $port was taken meanwhile, trying others"
  done
  write_client_files "$port"
  [ -z "${OZVM_OWNER_PID:-}" ] || start_watchdog "$OZVM_OWNER_PID" "$(qemu_pid)"
  log "booting (${accel[*]}), ssh on 127.0.0.1:$port, run dir $RUN"
}

cmd_wait() {
  [ -f "$RUN/ssh_config" ] || die "no VM in $RUN: run '$0 boot' first"
  local start=$SECONDS
  while [ $((SECONDS - start)) -lt "$WAIT_S" ]; do
    qemu_pid >/dev/null || die "qemu is not running; last console lines: $(tail -n 20 "$RUN/console.log" 2>/dev/null)"
    if ssh -F "$RUN/ssh_config" ozvm 'modprobe zfs && zfs version' >"$RUN/zfs_version" 2>/dev/null; then
      ssh -F "$RUN/ssh_config" -o ControlMaster=yes -o ControlPersist=yes -f -N ozvm \
        </dev/null >/dev/null 2>&1 || log "no shared ssh connection; each command connects anew"
      log "guest ready after $((SECONDS - start)) s: $(tr '\n' ' ' <"$RUN/zfs_version")"
      return 0
    fi
    sleep 1
  done
  die "the guest did not answer within $WAIT_S s; last console lines: $(tail -n 20 "$RUN/console.log" 2>/dev/null)"
}

# The overlay and disks are thrown away, so there is nothing to shut down cleanly: end qemu.
cmd_stop() {
  local pid
  [ ! -S "$RUN/ctl" ] || ssh -F "$RUN/ssh_config" -O exit ozvm 2>/dev/null || true
  if pid=$(qemu_pid); then
    kill "$pid"
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      log "qemu $pid ignored SIGTERM; killing it"
      kill -9 "$pid"
    fi
  fi
  rm -f "$RUN/qemu.pid" "$RUN/root.qcow2" "$RUN"/disk*.img
}

cmd_up() {
  cmd_deps
  cmd_build
  cmd_boot
  cmd_wait
  cmd_info
}

cmd_ssh() {
  [ -f "$RUN/ssh_config" ] || die "no VM in $RUN"
  exec ssh -F "$RUN/ssh_config" ozvm "$@"
}

cmd_info() {
  [ -f "$RUN/port" ] || die "no VM in $RUN"
  echo "host=127.0.0.1"
  echo "port=$(cat "$RUN/port")"
  echo "key=$RUN/id_ed25519"
  echo "host_key=$(cat "$RUN/host_key.pub")"
  echo "disks=$(paste -sd' ' "$RUN/disks")"
  echo "netcat_ports=$(paste -sd' ' "$RUN/netcat_ports")"
  echo "ssh_config=$RUN/ssh_config"
}

main() {
  local cmd=${1:-}
  case $cmd in
    deps|build|boot|wait|up|stop|info) shift; "cmd_$cmd" "$@" ;;
    ssh|_setup|_customize) shift; "cmd_$cmd" "$@" ;;
    *) die "usage: $0 deps|build|boot|wait|up|stop|ssh CMD...|info" ;;
  esac
}

# the whole file is read before anything runs, so editing it during a run is harmless
main "$@"; exit
