"""The unigram model's validation and test perplexity: a floor every student should beat.

    python recipes/lm_smollm2/unigram_eval.py OUT.json data=text data.tokenizer=... ...

Token frequencies are counted on the training blocks' scored tokens and smoothed by
adding ``lam`` to every id of the vocabulary: ``p(t) = (c_t + lam) / (N + lam V)``; ``lam``
is chosen on validation NLL from a grid. Scored are the students' tokens (softlabel's
``next_tokens`` of every block, padding ignored); ``acc`` is the share of tokens equal to
the most frequent training token (the unigram model's prediction everywhere). The overrides
compose ``softlabel-train``'s config, so the data are exactly the students'.
"""

from __future__ import annotations

import json
import math
import sys

import torch
from hydra import compose, initialize_config_dir

from softlabel.modules.build import build_datamodule
from softlabel.modules.lm_module import IGNORE_INDEX, next_tokens
from softlabel.train import CONF_DIR

LAMBDAS = (1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def counts(loader, vocab_size: int) -> torch.Tensor:
    """Occurrences of each id among the scored tokens of ``loader``'s blocks."""
    total = torch.zeros(vocab_size, dtype=torch.float64)
    for _, labels, _ in loader:
        target = next_tokens(labels)
        kept = target[target != IGNORE_INDEX].long()
        total += torch.bincount(kept, minlength=vocab_size).double()
    return total


def nll(train: torch.Tensor, held_out: torch.Tensor, lam: float) -> float:
    """Mean NLL (nats) of the held-out tokens under the add-``lam`` unigram of ``train``."""
    log_p = torch.log((train + lam) / (train.sum() + lam * train.numel()))
    return float(-(held_out * log_p).sum() / held_out.sum())


def main(out: str, overrides: list[str]) -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule = build_datamodule(cfg)
    vocab = int(datamodule.vocab_size)
    train = counts(datamodule.train_dataloader(), vocab)
    val = counts(datamodule.val_dataloader(), vocab)
    test = counts(datamodule.test_dataloader(), vocab)
    lam = min(LAMBDAS, key=lambda value: nll(train, val, value))
    top = int(train.argmax())
    record: dict[str, object] = {"lambda": lam, "lambdas": list(LAMBDAS)}
    for split, held_out in (("val", val), ("test", test)):
        value = nll(train, held_out, lam)
        record.update({f"{split}/nll": value, f"{split}/ppl": math.exp(value)})
        record[f"{split}/acc"] = float(held_out[top] / held_out.sum())
        record[f"{split}_tokens"] = int(held_out.sum())
    record["train_tokens"] = int(train.sum())
    record["train_distinct_ids"] = int((train > 0).sum())
    record["most_frequent_id"] = top
    record["most_frequent_token"] = datamodule.text_tokenizer.decode([top])
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2:])
