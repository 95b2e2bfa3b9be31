#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the lint and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check src tests
mypy
python -m pytest -q -p no:cacheprovider "$@"
