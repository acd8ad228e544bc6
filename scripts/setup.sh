#!/usr/bin/env bash
# Create .venv (or $ZOO_VENV) with torch, torchvision and zoo (editable, with test extras).
# torch/torchvision are pinned to the builds that match each other; on x86_64 Python 3.11 pip
# takes them from the machine's local wheel store when it has one.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${ZOO_VENV:-.venv}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
case "$(uname -m)" in
  aarch64|arm64) torch="torch==2.9.1 torchvision==0.24.1" ;;
  *) torch="torch==2.14.1 torchvision==0.29.1" ;;
esac
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install -q $torch
"$venv/bin/python" -m pip install -q -e ".[test]"
echo "ready: $venv (activate with: . $venv/bin/activate)"
