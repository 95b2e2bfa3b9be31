#!/usr/bin/env bash
# Students of 3 and 4 layers for the accuracy/latency frontier, from the teacher cache of the
# 2-layer cohort (--middle-depth 6: each student's second-to-last layer copies teacher layer 5
# and imitates its output, as a 2-layer student's first layer does), the 2-layer cohort's
# recipe and budget per student; then SST-2 test (all, and 15 words or more) and IMDB by k.
#   bash scripts/frontier_students.sh TEACHER [STEPS]
# LAYERS="3 4" and STUDENTS=2 choose the cohorts; a run stopped part way resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
TEACHER=${1:?usage: frontier_students.sh TEACHER [STEPS]}
STEPS=${2:-2000}
CACHE=${CACHE:-runs/cache-mpnet-sst2}
OUT=${OUT:-runs/frontier}
STUDENTS=${STUDENTS:-2}
declare -A plans=([3]="2,5,11/1,5,11/3,5,11/0,5,11" [4]="1,3,5,11/2,4,5,11/0,3,5,11/1,4,5,11")
for m in ${LAYERS:-3 4}; do
  if [[ -z "${plans[$m]:-}" ]]; then
    echo "frontier_students.sh: LAYERS holds $m; use 3 and/or 4 (2-layer students are the cohort's)" >&2
    exit 2
  fi
  plan=$(echo "${plans[$m]}" | cut -d/ -f"1-$STUDENTS")
  out="$OUT/m$m"
  shoal distill --teacher "$TEACHER" --data ../shared/data/sst2 --students "$STUDENTS" \
    --layers "$m" --init "$plan" --middle-depth 6 --student-data shards --augment 1 --compose 1 \
    --unlabeled ../shared/data/imdb-sample/unlabeled.tsv --max-length 64 --lr 2e-4 \
    --max-steps "$STEPS" --checkpoint-every 200 --cache-dir "$CACHE" --out "$out"
  shoal eval "$out" --data ../shared/data/sst2 --max-length 64 --by-k > "$out/eval_sst2.json"
  shoal eval "$out" --data ../shared/data/sst2 --max-length 64 --min-words 15 --by-k \
    > "$out/eval_sst2_long.json"
  shoal eval "$out" --data ../shared/data/imdb-sample --max-length 512 --by-k > "$out/eval_imdb.json"
done
