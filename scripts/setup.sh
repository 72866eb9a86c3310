#!/usr/bin/env bash
# Set up a Debian 12 machine (as root) to run middlewared_plugin and its tests:
# Debian packages (zfs-fuse, OpenSSH, chromium, qemu for the OpenZFS VM tier) and a virtualenv in .venv.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(zfs-fuse openssh-server openssh-client sudo python3 python3-venv python3-dev gcc
          chromium qemu-system-x86 qemu-utils mmdebstrap e2fsprogs curl ca-certificates lz4 pigz plzip)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  for attempt in 1 2 3; do
    apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}" && break
    [ "$attempt" = 3 ] && { echo "setup: apt-get failed" >&2; exit 1; }
    sleep 5
  done
fi
# zfs-fuse's package starts its daemon through an init script that a container may not run;
# the project starts it itself (middlewared_plugin/devtools/zfs_fuse.py).
mkdir -p /run/sshd

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.installed-$(cat setup.cfg setup.py | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi
