#!/usr/bin/env bash
# Screen the distillation levers at one small budget from one teacher: every run reads the
# same cached teacher outputs (--cache-dir) and trains each student for the same number of
# steps; then print one table (dev / test by k, dev disagreement, seconds).
#   bash scripts/screen_levers.sh TEACHER [STEPS] [SEED]
# LEVERS="baseline diverse" runs some of them (default: all four).
set -euo pipefail
cd "$(dirname "$0")/.."
TEACHER=${1:?usage: screen_levers.sh TEACHER [STEPS] [SEED]}
STEPS=${2:-500}
SEED=${3:-0}
DATA=${DATA:-../shared/data/sst2}
UNLABELED=${UNLABELED:-../shared/data/imdb-sample/unlabeled.tsv}
CACHE=${CACHE:-runs/cache-mpnet-sst2}
OUT=${OUT:-runs/screen}
common=(--teacher "$TEACHER" --data "$DATA" --students 2 --layers 2 --augment 1 --compose 1
  --unlabeled "$UNLABELED" --max-length 64 --lr 2e-4 --max-steps "$STEPS" --seed "$SEED"
  --checkpoint-every 200 --cache-dir "$CACHE")
declare -A levers=(
  [baseline]="--init skip"
  [relations]="--init skip --w-rel 1"
  [diverse]="--init 5,11/3,11 --student-data shards"
  [diverse-relations]="--init 5,11/3,11 --student-data shards --w-rel 1"
)
LEVERS=${LEVERS:-baseline relations diverse diverse-relations}
for name in $LEVERS; do
  # shellcheck disable=SC2086
  shoal distill "${common[@]}" ${levers[$name]} --out "$OUT/$name-s$SEED"
done
python - "$OUT" "$SEED" $LEVERS <<'PY'
import json, sys
from pathlib import Path
out, seed, names = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
print("| lever | seed | dev k = 1 / 2 | test k = 1 / 2 | dev disagreement | seconds (students) |")
print("|---|---:|---|---|---:|---:|")
for name in names:
    meta = json.loads((out / f"{name}-s{seed}" / "shoal_meta.json").read_text())
    t = meta["prefix_accuracy"]
    dev = " / ".join(f"{100 * r['dev_accuracy']:.2f}" for r in t)
    test = " / ".join(f"{100 * r['test_accuracy']:.2f}" for r in t)
    dis = f"{100 * t[-1]['dev_disagreement']:.2f}"
    secs = sum(meta["train_seconds"]["students"])
    print(f"| {name} | {seed} | {dev} | {test} | {dis} | {secs:.0f} |")
PY
