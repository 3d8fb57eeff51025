#!/usr/bin/env bash
# The test suite, from a fresh machine: makes ./.venv, installs, lints, runs pytest (slow tests too).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/venv.sh"
cd "$root"
"$venv/bin/ruff" check wakesleep pyro_wakesleep numpyro_wakesleep tests benchmarks examples tutorials
"$venv/bin/python" -m pytest -q "$@"
