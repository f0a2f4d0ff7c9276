"""Training-step speed of causal-LM distillation with a real teacher, through softlabel-train.

    python benchmarks/lm_steps.py TEACHER.gguf CACHE_DIR [--steps 6] [--out FILE.json]

Each mode is one ``softlabel-train`` run (``softlabel.train.train``, in this process) with
the settings of ``recipes/lm_smollm2`` (SmolLM2-135M-Instruct's tokenizer, the 5.2M llama
student ``student=hf_llama``, blocks of 128, batches of 4, 2 threads) for ``steps + 1``
training batches; a callback times each batch from ``on_train_batch_start`` to
``on_train_batch_end`` (forward, teacher, generation, backward and optimizer step), drops
the first as warm-up, and reports the median with tokens per second (512 block positions a
step) and, for on-policy batches, the share of the step spent generating. Modes: hard
labels, KD from the top-32 cache, live KD (the teacher's forward in every step) and
on-policy (``lm.on_policy.fraction=1``: every batch generated, 64 prompt + 64 new tokens;
the recipe's 0.5 averages this and live KD).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
TOKENS_PER_STEP = 4 * 128


class StepTimer(L.Callback):
    """Seconds of every training batch, and of its generation (on-policy)."""

    records: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()
        self._generated = float(getattr(pl_module, "generation_time_s", 0.0))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        generated = float(getattr(pl_module, "generation_time_s", 0.0)) - self._generated
        StepTimer.records.append((time.perf_counter() - self._start, generated))


def run(mode: str, overrides: list[str], steps: int) -> dict[str, float]:
    from hydra import compose, initialize_config_dir

    from softlabel.train import CONF_DIR, train

    StepTimer.records = []
    base = [
        "data=text",
        f"data.tokenizer={overrides[0]}",
        "data.max_bytes=200000",
        "data.block_size=128",
        "data.val_fraction=0.15",
        "data.test_fraction=0.15",
        "data.batch_size=4",
        "student=hf_llama",
        "optimizer.lr=0.003",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps + 1}",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar.refresh_rate=0",
        "logger=csv",
        "threads=2",
        "+callbacks.step_timer._target_=__main__.StepTimer",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*base, *overrides[1:]])
    with tempfile.TemporaryDirectory() as out:
        train(cfg, out)
    timed = StepTimer.records[1:]
    step = statistics.median(t for t, _ in timed)
    generating = sum(g for _, g in timed) / sum(t for t, _ in timed)
    row = {
        "mode": mode,
        "step_s": round(step, 3),
        "tokens_per_s": round(TOKENS_PER_STEP / step, 1),
        "generating_share": round(generating, 3),
        "steps_timed": len(timed),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("teacher", help="the teacher's GGUF file (also the tokenizer)")
    parser.add_argument("cache", help="its top-k cache on the recipe's data")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per mode")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    live = ["teacher=hf_causal_lm", f"teacher.pretrained={args.teacher}"]
    kd = ["target.temperature=1.0", "target.alpha=1.0"]
    modes = {
        "hard": ["target=hard"],
        "kd_cache": ["target=kd", *kd, "teacher=cached", f"teacher.cache={args.cache}"],
        "kd_live": ["target=kd", *kd, *live],
        "on_policy": [
            "target=kd_jsd",
            "target.beta=0.5",
            *kd,
            *live,
            "lm.on_policy.fraction=1.0",
            "lm.on_policy.prompt_tokens=64",
            "lm.on_policy.max_new_tokens=64",
        ],
    }
    rows = [run(name, [args.teacher, *extra], args.steps) for name, extra in modes.items()]
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
