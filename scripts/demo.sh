#!/usr/bin/env bash
# Set up the machine, create file-backed zfs-fuse pools tank and backup, start the server, print the URL.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m middlewared_plugin.devtools.demo "$@"
