#!/usr/bin/env bash
# The main job, from a fresh machine: makes ./.venv, installs, trains on the embedded data set.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/venv.sh"
cd "$root"
"$venv/bin/python" examples/rws_digits.py "$@"
