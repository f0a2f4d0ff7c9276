"""Students measured on the text they generate, as GKD, MiniLLM and DistiLLM measure them.

    python recipes/lm_smollm2/generation_eval.py OUT.csv TEACHER GROUP=RUNS [GROUP=RUNS ...] \
        [--methods hard kd ...] [--samples 2] [--teacher-row] -- data=text data.tokenizer=...

Each test block's first 64 tokens are the prompt; a model continues it with 64 new tokens
(``softlabel.modules.lm_generation``, the on-policy training's own generation: greedy, and
``--samples`` draws at temperature 1, seeded the same for every model), up to and
including its first end-of-document token. Per model and decoding:

- ``rouge_l``: ROUGE-L F1 (Lin 2004; beta = 1) between the continuation and the block's
  own next 64 tokens, on token ids: ``2 P R / (P + R)`` with ``P = LCS / |generated|``,
  ``R = LCS / |reference|``, averaged over prompts. GKD, MiniLLM and DistiLLM report
  ROUGE-L of generated answers against references (on words).
- ``teacher_nll``: the teacher's mean negative log-likelihood of the generated tokens
  (softlabel's token NLL, nats), what on-policy distillation lowers; repetition also
  lowers it, hence
- ``distinct``: distinct tokens / generated tokens, averaged over prompts (1: no repeat).

``RUNS`` are comparison ``runs/`` directories (``RUNS/<method>/seed<s>/hf_model``), each
given as ``GROUP=DIR``: its rows are labelled ``GROUP``. ``--teacher-row`` adds the
teacher's own continuations. The overrides after ``--`` compose ``softlabel-train``'s
config, so the test blocks are exactly the students'. Rows already in ``OUT.csv`` are
kept and not recomputed; the file is replaced whole after each model.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from softlabel.models import hf_causal_lm
from softlabel.modules.build import build_datamodule
from softlabel.modules.lm_generation import generate_continuations, generation_settings
from softlabel.modules.lm_metrics import build_lm_metrics
from softlabel.modules.lm_module import IGNORE_INDEX, next_tokens, shift_for_causal_lm
from softlabel.train import CONF_DIR

PROMPT_TOKENS = 64
NEW_TOKENS = 64
FIELDS = [
    "group",
    "method",
    "seed",
    "decoding",
    "prompts",
    "generated_tokens",
    "rouge_l",
    "teacher_nll",
    "distinct",
    "wall_s",
]


def lcs_length(a: list[int], b: list[int]) -> int:
    """Length of the longest common subsequence of two id lists (dynamic programming)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(generated: list[int], reference: list[int]) -> float:
    """ROUGE-L F1 of two id lists (0 when either is empty)."""
    lcs = lcs_length(generated, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(generated), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


@torch.no_grad()
def evaluate(model, teacher, loader, vocab_size: int, temperature: float, seed: int, eos, pad):
    """(prompts, generated tokens, mean ROUGE-L, teacher NLL, mean distinct share)."""
    settings = generation_settings(
        {
            "prompt_tokens": PROMPT_TOKENS,
            "max_new_tokens": NEW_TOKENS,
            "temperature": temperature,
        },
        PROMPT_TOKENS + NEW_TOKENS,
    )
    torch.manual_seed(seed)
    nll = build_lm_metrics(vocab_size, IGNORE_INDEX)["nll"]
    rouge, distinct, prompts, tokens = 0.0, 0.0, 0, 0
    for input_ids, labels, _ in loader:
        ids, new_labels = generate_continuations(
            model, input_ids.long(), labels.long(), settings, eos_token_id=eos, pad_token_id=pad
        )
        nll.update(shift_for_causal_lm(teacher(ids)), next_tokens(new_labels))
        for row in range(ids.shape[0]):
            kept = new_labels[row, PROMPT_TOKENS:]
            generated = kept[kept != IGNORE_INDEX].tolist()
            if not generated:  # a prompt holding padding: not scored
                continue
            end = PROMPT_TOKENS + NEW_TOKENS
            reference = labels[row, PROMPT_TOKENS:end]
            reference = _until_eos(reference[reference != IGNORE_INDEX].tolist(), eos)
            rouge += rouge_l(generated, reference)
            distinct += len(set(generated)) / len(generated)
            prompts += 1
            tokens += len(generated)
    return prompts, tokens, rouge / prompts, float(nll.compute()), distinct / prompts


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("teacher")
    parser.add_argument("runs", nargs="+", help="GROUP=DIR: a comparison's runs/ directory")
    parser.add_argument("--methods", nargs="*", default=None, help="default: every method")
    parser.add_argument("--samples", type=int, default=2, help="draws at temperature 1")
    parser.add_argument("--teacher-row", action="store_true")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    overrides = argv[split + 1 :]
    if args.samples < 0:
        raise SystemExit(f"--samples={args.samples}; allowed: an integer >= 0")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    if int(cfg.data.block_size) < PROMPT_TOKENS + NEW_TOKENS:
        raise SystemExit(
            f"data.block_size={cfg.data.block_size}; this evaluation needs blocks of at "
            f"least {PROMPT_TOKENS + NEW_TOKENS} tokens (prompt and continuation)"
        )
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    datamodule = build_datamodule(cfg)
    vocab = int(datamodule.vocab_size)
    eos, pad = int(datamodule.eos_token_id), int(datamodule.pad_token_id)
    loader = datamodule.test_dataloader()
    teacher = hf_causal_lm(pretrained=args.teacher, num_classes=vocab).eval()
    decodings = [("greedy", 0.0, 0)] + [(f"sample{i}", 1.0, i) for i in range(args.samples)]

    models: list[tuple[str, str, str, object]] = []  # group, method, seed, model source
    if args.teacher_row:
        models.append(("teacher", "teacher", "-", teacher))
    for item in args.runs:
        group, sep, directory = item.partition("=")
        if not sep or not group or not directory:
            raise SystemExit(f"runs argument {item!r}; allowed: GROUP=DIR (e.g. warm=out/runs)")
        runs = Path(directory)
        for model_dir in sorted(runs.glob("*/seed*/hf_model")):
            method, seed = model_dir.parent.parent.name, model_dir.parent.name[4:]
            if args.methods is None or method in args.methods:
                models.append((group, method, seed, model_dir))
    if not models:
        raise SystemExit(f"no */seed*/hf_model under {args.runs}")

    rows: list[dict[str, object]] = list(_read(args.out))
    done = {(r["group"], r["method"], str(r["seed"]), r["decoding"]) for r in rows}
    for group, method, seed, source in models:
        todo = [d for d in decodings if (group, method, seed, d[0]) not in done]
        if not todo:
            continue
        model = (
            source
            if not isinstance(source, Path)
            else hf_causal_lm(pretrained=str(source), num_classes=vocab).eval()
        )
        for name, temperature, draw in todo:
            start = time.perf_counter()
            prompts, tokens, rouge, teacher_nll, distinct = evaluate(
                model, teacher, loader, vocab, temperature, 1000 + draw, eos, pad
            )
            row = dict(group=group, method=method, seed=seed, decoding=name, prompts=prompts)
            row.update(generated_tokens=tokens, rouge_l=round(rouge, 5))
            row.update(teacher_nll=round(teacher_nll, 5), distinct=round(distinct, 5))
            row["wall_s"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            print(row, flush=True)
        _write(args.out, rows)


if __name__ == "__main__":
    main()
