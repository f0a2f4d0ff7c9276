#!/usr/bin/env bash
# Byte-level LM distillation on the standard-library corpus (needs softlabel[hf]):
# 1. the teacher (GPT-2, 4 layers, d = 256) on hard labels, 3 epochs;
# 2. its caches: dense (all 258 logits) and top-k for k = 8, 32, 128;
# 3. the students (recipe.yaml), 3 seeds each.
#   bash recipes/lm_distill/run.sh            (from the repository root)
# Steps already done (a metrics.json or a cache manifest present) are skipped.
set -euo pipefail
OUT=${OUT:-compare/lm_distill}
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=(data=text data.max_bytes=500000 data.block_size=128 data.batch_size=16)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [ ! -f "$OUT/teacher/metrics.json" ]; then
  OMP_NUM_THREADS=2 "$PYTHON" -m softlabel.train "${DATA[@]}" student=hf_causal_lm \
    student.config.n_layer=4 student.config.n_embd=256 student.config.n_head=4 \
    target=hard method=teacher trainer.max_epochs=3 threads=2 \
    trainer.log_every_n_steps=20 callbacks.progress_bar.refresh_rate=0 \
    hydra.run.dir="$OUT/teacher"
fi
cache() {  # cache NAME KIND [K]
  if [ ! -f "$OUT/caches/$1/manifest.json" ]; then
    OMP_NUM_THREADS=2 "$PYTHON" -m softlabel.cache_cli "${DATA[@]}" teacher=hf_causal_lm \
      teacher.pretrained="$OUT/teacher/hf_model" out="$OUT/caches/$1" kind="$2" k="${3:-10}" \
      batch_size=64 progress=false hydra.run.dir="$OUT/caches/logs/$1"
  fi
}
cache dense dense
cache top8 topk 8
cache top32 topk 32
cache top128 topk 128
"$PYTHON" -m softlabel.compare.cli --config-dir "$HERE" --config-name recipe \
  out="$OUT" cache_root="$OUT/caches"
