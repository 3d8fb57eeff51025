#!/usr/bin/env bash
# Builds the documentation site into docs/_build/html/ (open docs/_build/html/index.html).
# Offline: notebooks are rendered as saved, never executed; no intersphinx. Any Sphinx warning
# fails the build (-W), after reporting all of them (--keep-going). Extra arguments go to
# sphinx-build (e.g. -E for a clean rebuild).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/venv.sh"
cd "$root"
"$venv/bin/python" -m sphinx -W --keep-going -b html "$@" docs docs/_build/html
echo "Documentation: $root/docs/_build/html/index.html"
