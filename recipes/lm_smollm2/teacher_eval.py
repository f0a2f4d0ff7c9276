"""The teacher's own validation and test perplexity on the recipe's split.

    python recipes/lm_smollm2/teacher_eval.py OUT.json MODEL data=text data.tokenizer=... ...

``MODEL`` is a local directory or GGUF file; the overrides compose ``softlabel-train``'s
config, so the data (documents, split, tokenizer, blocks) are exactly the students'. The
metrics are softlabel's token metrics (``val/nll``, ``val/ppl``, ``val/acc``, and the same
on ``test/``) over the same tokens the students are scored on; ``OUT.json`` also records
wall and CPU seconds and the number of tokens.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from hydra import compose, initialize_config_dir

from softlabel.models import hf_causal_lm
from softlabel.modules.build import build_datamodule
from softlabel.modules.lm_metrics import build_lm_metrics
from softlabel.modules.lm_module import IGNORE_INDEX, next_tokens, shift_for_causal_lm
from softlabel.train import CONF_DIR


@torch.no_grad()
def evaluate(model, loader, vocab_size: int) -> tuple[dict[str, float], int]:
    metrics = build_lm_metrics(vocab_size, IGNORE_INDEX)
    tokens = 0
    for input_ids, labels, _ in loader:
        target = next_tokens(labels)
        metrics.update(shift_for_causal_lm(model(input_ids.long())), target)
        tokens += int((target != IGNORE_INDEX).sum())
    return {k: float(v) for k, v in metrics.compute().items()}, tokens


def main(out: str, model_path: str, overrides: list[str]) -> None:
    start = (time.perf_counter(), time.process_time())
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    datamodule = build_datamodule(cfg)
    model = hf_causal_lm(pretrained=model_path, num_classes=int(datamodule.vocab_size)).eval()
    record: dict[str, object] = {"model": model_path, "data": datamodule.name}
    for split, loader in (
        ("val", datamodule.val_dataloader()),
        ("test", datamodule.test_dataloader()),
    ):
        values, tokens = evaluate(model, loader, int(datamodule.vocab_size))
        record.update({f"{split}/{k}": v for k, v in values.items()})
        record[f"{split}_tokens"] = tokens
    record["wall_time_s"] = round(time.perf_counter() - start[0], 1)
    record["cpu_time_s"] = round(time.process_time() - start[1], 1)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
