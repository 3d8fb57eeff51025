#!/usr/bin/env bash
# The main job, from a fresh machine: makes ./.venv, installs, and trains a Helmholtz machine
# on the embedded digits data set with reweighted wake-sleep (python -m pyro_wakesleep train).
# Outputs go to runs/digits-rws (override with OUT=...); a second call resumes the finished
# run (and only re-evaluates it) instead of overwriting it. Extra flags are passed through.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/venv.sh"
cd "$root"
out="${OUT:-runs/digits-rws}"
resume=()
if [ -f "$out/checkpoint.pt" ]; then resume=(--resume); fi
"$venv/bin/python" -m pyro_wakesleep train --dataset digits --algorithm rws --out "$out" \
  ${resume[@]+"${resume[@]}"} "$@"
