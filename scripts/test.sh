#!/usr/bin/env bash
# Set up the machine and run the whole test suite: unit, integration (zfs-fuse, sshd), browser, OpenZFS VM.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
mkdir -p test-output
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider --junitxml=test-output/junit.xml "$@"
status=$?
set -e
# pytest's 5 means "no tests collected": that is a failure of the suite, never a pass.
exit $status
