"""Paired difference in bits per byte of two students of one seed, with an interval over the
test blocks (what ``softlabel-compare`` cannot give from one seed without saved predictions).

    python recipes/lm_cross_tokenizer/paired_blocks.py BASE_RUN RUN data=text ...

``BASE_RUN`` and ``RUN`` are run directories (their ``hf_model/``); the overrides compose
``softlabel-train``'s config, so the test blocks are the students'. Per test block, the bits
``sum -log2 p(y)`` of each model and the block's bytes (``softlabel``'s token bytes); the
difference ``bpb(RUN) - bpb(BASE_RUN)`` over all blocks and its 95% percentile interval
from 2,000 bootstrap resamples of the blocks (``softlabel.compare.stats``, seed 0). The
interval covers the test text's sampling only, not the training seed's.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from softlabel.compare.stats import example_weights, percentile_interval
from softlabel.models import hf_causal_lm
from softlabel.modules.build import build_datamodule
from softlabel.modules.lm_metrics import token_byte_lengths
from softlabel.modules.lm_module import IGNORE_INDEX, next_tokens, shift_for_causal_lm
from softlabel.train import CONF_DIR


@torch.no_grad()
def block_bits(model, loader) -> np.ndarray:
    """(blocks,) the bits of each test block's scored tokens."""
    out = []
    for input_ids, labels, _ in loader:
        target = next_tokens(labels)
        logits = shift_for_causal_lm(model(input_ids.long())).float()
        nats = F.cross_entropy(
            logits.transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none"
        )
        out.append((nats.sum(dim=1) / math.log(2.0)).double().numpy())
    return np.concatenate(out)


def main(base: str, run: str, overrides: list[str]) -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule = build_datamodule(cfg)
    byte_lengths = token_byte_lengths(datamodule.text_tokenizer)
    assert byte_lengths is not None
    sizes = []
    for _, labels, _ in datamodule.test_dataloader():
        target = next_tokens(labels)
        kept = target.clamp_min(0)
        sizes.append((byte_lengths[kept] * (target != IGNORE_INDEX)).sum(dim=1).numpy())
    size = np.concatenate(sizes).astype(np.float64)
    bits = [
        block_bits(hf_causal_lm(pretrained=f"{d}/hf_model").eval(), datamodule.test_dataloader())
        for d in (base, run)
    ]
    diff = bits[1] - bits[0]
    weights = example_weights(np.random.default_rng(0), 2000, len(diff))
    draws = (weights @ diff) / (weights @ size)
    low, high = percentile_interval(draws, 0.95)
    record = {
        "base": base,
        "run": run,
        "test_blocks": len(diff),
        "test_bytes": int(size.sum()),
        "bpb_base": float(bits[0].sum() / size.sum()),
        "bpb_run": float(bits[1].sum() / size.sum()),
        "difference": float(diff.sum() / size.sum()),
        "interval_95": [low, high],
    }
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
