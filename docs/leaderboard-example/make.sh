#!/usr/bin/env bash
# Remakes the README's example leaderboard from runs on the real PF-Willow (CPU, a few minutes).
# Random-weight presets and weight-free matchers: the numbers test the pipeline, not the methods.
set -euo pipefail
DATA=${CORRBENCH_DATA:-../shared/data}
RUNS=${RUNS:-runs/example}
python -m benchmarks.run --matcher identity --dataset pf-willow --data-root "$DATA/PF-WILLOW" --out "$RUNS/a" --quiet
python -m benchmarks.run --matcher patch --dataset pf-willow --data-root "$DATA/PF-WILLOW" --out "$RUNS/b" --quiet
python -m benchmarks.run --matcher dift --preset tiny --dataset pf-willow --data-root "$DATA/PF-WILLOW" --sample 100 --out "$RUNS/c" --quiet
python -m benchmarks.run --matcher dinov2 --preset tiny --dataset pf-willow --data-root "$DATA/PF-WILLOW" --sample 100 --out "$RUNS/d" --quiet
python -m leaderboard build "$RUNS"/a "$RUNS"/b "$RUNS"/c "$RUNS"/d --out "$RUNS/board" --format md,csv,tex,html \
    --label "$RUNS/b=Patch colour baseline"
cp "$RUNS/board/pf-willow-pck-vs-alpha.png" "$RUNS/board/pf-willow-categories.png" "$RUNS/board/pf-willow.tex" \
    "$RUNS/board/pf-willow.md" docs/leaderboard-example/
