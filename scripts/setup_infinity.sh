#!/usr/bin/env bash
# Create .venv-infinity: Infinity (infinity-emb, pinned), the peer server `shoal bench serve`
# compares against, in an environment of its own (its pins: numpy<2, typer<0.13, uvicorn<0.33,
# rich<14, sentence-transformers<4 clash with Shoal's). torch==2.13.0 (CPU) first, so nothing
# pulls a CUDA build. Only the benchmark uses it; the tests never do.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-infinity/bin/python ]; then
  "$PY" -m venv .venv-infinity
fi
.venv-infinity/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
.venv-infinity/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
.venv-infinity/bin/python -m pip install -q "infinity-emb[server,torch]==0.0.78" 2>&1 \
  | grep -v "is ignored" || true
.venv-infinity/bin/infinity_emb --help >/dev/null && echo "infinity-emb ready in .venv-infinity"
