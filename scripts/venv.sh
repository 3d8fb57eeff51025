#!/usr/bin/env bash
# Creates (or refreshes) ./.venv with everything the main job and the tests need.
# Sourced by scripts/main.sh, scripts/test.sh and scripts/docs.sh. Re-installs only when pyproject.toml changes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
# torch is pinned before pyro-ppl so that pip takes the local CPU wheel where one exists
# rather than pulling a multi-gigabyte CUDA build. Override with TORCH_SPEC=... on a GPU box.
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
stamp="$venv/.wakesleep-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -c1-16) $torch_spec"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "$torch_spec" -e "$root[pyro,numpyro,arviz,data,speech,dev,docs]"
  echo "$want" > "$stamp"
fi
