"""The teacher's bits per byte on the students' validation and test text.

    python recipes/lm_cross_tokenizer/teacher_eval.py OUT.json MODEL data=text ...

``MODEL`` is a GGUF file (or a local directory) holding the teacher and its tokenizer; the
overrides compose ``softlabel-train``'s config, so the blocks are exactly the students'.
Each block is tokenized by the teacher as the students' teacher reads it
(``softlabel.data.text.alignment.TokenAligner``: its own tokens of each block, its end of
document where the data's is) and scored by softlabel's ``bpb`` metric with the teacher's
bytes per id: the bits of every teacher token after the block's first over the bytes they
spell. A student scores every byte after the block's first, so the teacher's scored text
is each block less its first teacher token; ``OUT.json`` records both byte counts, with wall
and CPU seconds.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from softlabel.data.text.alignment import TokenAligner
from softlabel.data.tokenizers import load_tokenizer
from softlabel.models import hf_causal_lm
from softlabel.modules.build import build_datamodule
from softlabel.modules.lm_metrics import build_lm_metrics, token_byte_lengths
from softlabel.modules.lm_module import IGNORE_INDEX, next_tokens
from softlabel.train import CONF_DIR


@torch.no_grad()
def evaluate(
    model, aligner: TokenAligner, loader, byte_lengths, student_lengths
) -> dict[str, float]:
    """bpb and token counts of the teacher on its own tokens of the loader's blocks;
    ``student_lengths``: the bytes of each data id, for the bytes the students score."""
    metrics = build_lm_metrics(aligner.teacher_vocab, IGNORE_INDEX, byte_lengths)
    student_bytes = 0
    teacher_tokens = 0
    for input_ids, labels, _ in loader:
        lengths = (labels != IGNORE_INDEX).sum(dim=1).numpy()
        scored = next_tokens(labels)
        kept = scored[scored != IGNORE_INDEX]
        student_bytes += int(student_lengths[kept].sum())
        alignment = aligner.align(input_ids.numpy(), lengths)
        blocks = [alignment.block(b) for b in range(len(lengths))]
        width = max(len(b) for b in blocks)
        ids = np.full((len(blocks), width), aligner.teacher_eos, dtype=np.int64)
        target = np.full((len(blocks), width), IGNORE_INDEX, dtype=np.int64)
        for i, block in enumerate(blocks):
            ids[i, : len(block)] = block
            target[i, : len(block) - 1] = block[1:]
        logits = model(torch.from_numpy(ids))
        metrics.update(logits, torch.from_numpy(target))
        teacher_tokens += int((target != IGNORE_INDEX).sum())
    values = {k: float(v) for k, v in metrics.compute().items()}
    scored_bytes = int(metrics["bpb"].bytes)
    return {
        "bpb": values["bpb"],
        "teacher_tokens": teacher_tokens,
        "teacher_bytes": scored_bytes,
        "student_bytes": student_bytes,
    }


def main(out: str, model_path: str, overrides: list[str]) -> None:
    start = (time.perf_counter(), time.process_time())
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    datamodule = build_datamodule(cfg)
    tokenizer = load_tokenizer(model_path, "teacher.tokenizer")
    aligner = TokenAligner(datamodule.text_tokenizer, tokenizer)
    byte_lengths = token_byte_lengths(tokenizer)
    if byte_lengths is None:
        raise SystemExit(f"{model_path}: its tokenizer's ids do not spell their text")
    student_lengths = token_byte_lengths(datamodule.text_tokenizer)
    assert student_lengths is not None  # the aligner has checked that its ids spell the text
    model = hf_causal_lm(pretrained=model_path).eval()
    record: dict[str, object] = {"model": model_path, "data": datamodule.name}
    for split, loader in (
        ("val", datamodule.val_dataloader()),
        ("test", datamodule.test_dataloader()),
    ):
        values = evaluate(model, aligner, loader, byte_lengths, student_lengths)
        record.update({f"{split}/{k}": v for k, v in values.items()})
    record["wall_time_s"] = round(time.perf_counter() - start[0], 1)
    record["cpu_time_s"] = round(time.process_time() - start[1], 1)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
