#!/usr/bin/env bash
# Remakes the README's example leaderboard from runs on the real PF-Willow (CPU, under a minute).
# Random-weight presets and weight-free matchers: the numbers test the pipeline, not the methods.
# Every run draws the same 100 pairs (--sample depends on dataset, split, N and --sample-seed only),
# so the four rows are comparable and ranked. OUT: where the shown files go (default: beside this
# script, as the README shows them); RUNS: the run folders.
set -euo pipefail
DATA=${CORRBENCH_DATA:-../shared/data}
RUNS=${RUNS:-runs/example}
OUT=${OUT:-docs/leaderboard-example}
COMMON=(--dataset pf-willow --data-root "$DATA/PF-WILLOW" --sample 100 --quiet)
python -m benchmarks.run --matcher identity "${COMMON[@]}" --out "$RUNS/a"
python -m benchmarks.run --matcher patch "${COMMON[@]}" --out "$RUNS/b"
python -m benchmarks.run --matcher dift --preset tiny "${COMMON[@]}" --out "$RUNS/c"
python -m benchmarks.run --matcher dinov2 --preset tiny "${COMMON[@]}" --out "$RUNS/d"
python -m leaderboard build "$RUNS"/a "$RUNS"/b "$RUNS"/c "$RUNS"/d --out "$RUNS/board" --format md,csv,tex,html \
    --figures png --label "$RUNS/b=Patch colour baseline"
mkdir -p "$OUT"
cp "$RUNS/board/pf-willow-pck-vs-alpha.png" "$RUNS/board/pf-willow-categories.png" "$RUNS/board/pf-willow.tex" \
    "$RUNS/board/pf-willow.md" "$OUT/"
