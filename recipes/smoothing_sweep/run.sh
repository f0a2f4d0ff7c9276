#!/usr/bin/env bash
# Tune label smoothing (eps) and distillation (T, alpha) on digits with Hydra grid sweeps
# of softlabel-train, then aggregate and pick on validation.
#   bash recipes/smoothing_sweep/run.sh            (from the repository root)
set -euo pipefail
OUT=${OUT:-compare/smoothing_sweep_grid}  # recipe.yaml writes compare/smoothing_sweep
PYTHON=${PYTHON:-python}
TRAIN=("$PYTHON" -m softlabel.train)
# The settings of recipe.yaml and compare_digits: digits as (1, 8, 8) images, per-channel
# normalisation (the default), 64-unit MLP student, 30 epochs at lr 0.01.
BASE=(data=digits data.source.flat=false student=mlp_small trainer.max_epochs=30 optimizer.lr=0.01)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per run: faster for small MLPs

# The KD teacher of compare_digits (a 2-D CNN, hard labels), trained once (skipped when it
# already finished); the students get its last epoch.
if [ ! -f "$OUT/teacher/metrics.json" ]; then
  "${TRAIN[@]}" "${BASE[@]}" student=cnn target=hard method=teacher hydra.run.dir="$OUT/teacher"
fi
# Grid 1: eps (seed 0).
"${TRAIN[@]}" -m "${BASE[@]}" target=ls target.smoothing=0.0,0.05,0.1,0.2,0.3 seed=0 \
  'method=ls_eps${target.smoothing}' \
  hydra.sweep.dir="$OUT/ls" 'hydra.sweep.subdir=eps${target.smoothing}_seed${seed}'
# Grid 2: T x alpha (seed 0).
"${TRAIN[@]}" -m "${BASE[@]}" target=kd teacher=cnn \
  teacher.checkpoint="$OUT/teacher/checkpoints/last.ckpt" \
  target.temperature=1,4,8 target.alpha=0.5,0.9 seed=0 \
  'method=kd_T${target.temperature}_a${target.alpha}' \
  hydra.sweep.dir="$OUT/kd" 'hydra.sweep.subdir=T${target.temperature}_a${target.alpha}_seed${seed}'
# One row per configuration (mean over the seeds); summary.md names the best on validation.
"$PYTHON" -m softlabel.compare.cli aggregate "$OUT/ls" "$OUT/kd" --out "$OUT" \
  --title "Smoothing sweep on digits (eps; T, alpha)"
