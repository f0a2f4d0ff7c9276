"""A teacher with another tokenizer than the data's (cross-tokenizer distillation).

``teacher.tokenizer`` names the teacher's tokenizer when it differs from ``data.tokenizer``.
Every block of the data is then tokenized by the teacher too and the positions aligned by
the text each token covers (:mod:`softlabel.data.text.alignment`): the teacher runs on its
own ids, and its next-token logits at a position that has read exactly the student's text
become the teacher row of that student position. A ``softlabel-cache`` of such a teacher
stores those rows, and which positions have one.

The loss: at a position with a teacher row, the target source's loss (ULD, whose distance
reads only the sorted probabilities, so that the two vocabularies may differ); at a
position without one, the source's hard-label term alone, ``(1 - alpha) CE`` (the loss
with no teacher term), so the student still learns every token of the data. Only sources
whose engine mode takes a teacher of any vocabulary are accepted
(``MODES[source.mode].any_vocabulary``: ``target=uld``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from softlabel._hf_files import is_gguf
from softlabel.data.text.alignment import BlockAlignment, TokenAligner, vocabulary_map
from softlabel.data.tokenizers import (
    BYTE_TOKENIZER_FILE,
    ByteTokenizer,
    load_tokenizer,
    tokenizer_identity,
)
from softlabel.kernels.modes import MODES
from softlabel.modules.references import CachedTeacher, LiveTeacher, ReferenceProvider

__all__ = [
    "AlignedCache",
    "AlignedLoss",
    "AlignedTeacher",
    "aligned_loss",
    "aligned_teacher",
    "check_own_tokenizer",
    "has_other_vocabulary",
    "set_vocabulary_map",
    "tokenizer_name",
]

log = logging.getLogger(__name__)
IGNORE_INDEX = -100


def tokenizer_name(tokenizer: Any) -> str:
    """How messages name a tokenizer: ``null (byte-level)`` or its path, with its size."""
    if isinstance(tokenizer, ByteTokenizer):
        return f"null (byte-level, {tokenizer.vocab_size} ids)"
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return f"{name} ({len(tokenizer)} ids)"


def has_other_vocabulary(provider: Any) -> bool:
    """Whether ``provider`` gives a teacher with another tokenizer than the data's."""
    return bool(getattr(provider, "other_vocabulary", False))


def _alignment_record(alignment: BlockAlignment) -> dict[str, Any]:
    return {
        "scored": int(alignment.scored),
        "aligned": int(alignment.aligned),
        "share": round(alignment.share, 6),
    }


class AlignedTeacher(LiveTeacher):
    """A frozen teacher with another tokenizer, run on its own ids of each block; its logits
    (B, L, V_teacher) are placed at the student's positions (zeros where there is no
    counterpart, :meth:`aligned` says where there is). Blocks are found by dataset index, so
    the batch must hold the data's blocks (no generated batches)."""

    other_vocabulary = True

    def __init__(
        self,
        model: nn.Module,
        alignment: BlockAlignment,
        blocks: np.ndarray,
        lengths: np.ndarray,
        aligner: TokenAligner,
    ) -> None:
        super().__init__(model)
        self.alignment = alignment
        self.blocks, self.lengths = blocks, lengths
        self.aligner = aligner
        pad = getattr(aligner.teacher, "pad_token_id", None)
        self.pad_id = aligner.teacher_eos if pad is None else int(pad)
        #: ``{"data.tokenizer": name, "teacher.tokenizer": name}`` for messages
        self.tokenizers = {
            "data.tokenizer": tokenizer_name(aligner.student),
            "teacher.tokenizer": tokenizer_name(aligner.teacher),
        }

    def _rows(self, x: Tensor, index: Tensor) -> np.ndarray:
        rows = index.detach().cpu().numpy().astype(np.int64)
        given = x.detach().cpu().numpy()
        width = given.shape[1]
        data = self.blocks[rows, :width]
        real = np.arange(width)[None, :] < self.lengths[rows][:, None]
        if given.shape[0] != len(rows) or not np.array_equal(given[real], data[real]):
            raise ValueError(
                "the batch's token ids are not the data's blocks at its indices: a teacher with "
                "another tokenizer (teacher.tokenizer) reads its own tokens of each block of the "
                "data, so it cannot score other ids (e.g. generated continuations)"
            )
        return rows

    def aligned(self, x: Tensor, index: Tensor) -> Tensor:
        """(B, L) bool: the student positions that have a teacher row."""
        rows = self._rows(x, index)
        positions = self.alignment.positions[rows, : x.shape[1]]
        return torch.from_numpy(positions >= 0).to(x.device)

    def forward(self, x: Tensor, index: Tensor) -> Tensor:
        rows = self._rows(x, index)
        blocks = [self.alignment.block(int(r)) for r in rows]
        longest = max((len(b) for b in blocks), default=0)
        ids = np.full((len(rows), max(longest, 1)), self.pad_id, dtype=np.int64)
        for i, block in enumerate(blocks):  # right-padded: a causal model's rows before it hold
            ids[i, : len(block)] = block
        logits = self.logits(torch.from_numpy(ids).to(x.device))
        positions = torch.from_numpy(self.alignment.positions[rows, : x.shape[1]]).to(x.device)
        gathered = logits.gather(
            1, positions.clamp_min(0).long()[..., None].expand(-1, -1, logits.shape[-1])
        )
        return gathered.masked_fill_((positions < 0)[..., None], 0.0)


class AlignedCache(CachedTeacher):
    """A ``softlabel-cache`` of a teacher with another tokenizer: rows of its vocabulary at
    the student's positions, and the mask of the positions that have one."""

    other_vocabulary = True

    def __init__(self, cache: Any) -> None:
        super().__init__(cache)
        alignment = cache.alignment
        self.tokenizers = {
            "data.tokenizer": str(alignment["data.tokenizer"]),
            "teacher.tokenizer": str(alignment["teacher.tokenizer"]),
        }

    def aligned(self, x: Tensor, index: Tensor) -> Tensor:
        """(B, L) bool: the student positions that have a teacher row."""
        mask = self.table.lookup_aligned(index.detach().to("cpu", torch.long))
        return mask[:, : x.shape[1]].to(x.device)


def _select(reference: Any, keep: Tensor) -> Any:
    """The rows of a reference (a tensor, or a ``TopKLogits`` field by field) where ``keep``."""
    if isinstance(reference, tuple):
        return type(reference)(*(field[keep] for field in reference))
    return reference[keep]


class AlignedLoss(nn.Module):
    """The summed loss of the student's rows against a teacher with another vocabulary.

    ``rows`` are the student's logits (..., V) or, with ``linear``, its hidden states
    (..., H) and ``head``; ``taught`` (...) marks the positions with a teacher row. Taught
    positions: ``source``'s loss against the teacher's rows; the others: ``(1 - alpha)``
    times the cross-entropy (the source's loss without its teacher term). Each part runs on
    its own rows only.
    """

    def __init__(self, source: Any, *, linear: bool, chunk_rows: int | None = None) -> None:
        super().__init__()
        from softlabel import LinearSoftTargetLoss, SoftTargetLoss
        from softlabel.targets import Hard

        self.source = source
        self.linear = bool(linear)
        if self.linear:
            self.taught = LinearSoftTargetLoss(source, reduction="sum", chunk_rows=chunk_rows)
            self.untaught = LinearSoftTargetLoss(Hard(), reduction="sum", chunk_rows=chunk_rows)
        else:
            self.taught = SoftTargetLoss(source, reduction="sum")
            self.untaught = SoftTargetLoss(Hard(), reduction="sum")

    def hard_weight(self) -> float:
        """The weight of the hard-label term in the source's loss: ``1 - alpha``."""
        return 1.0 - float(self.source.values().get("alpha", 1.0))

    def _part(
        self, loss: nn.Module, rows: Tensor, target: Tensor, reference: Any, head: Any
    ) -> Tensor:
        if self.linear:
            extra = {} if reference is None else {"teacher_logits": reference}
            return loss(rows, head.weight, target, head.bias, **extra)
        return loss(rows, target, reference)

    def forward(
        self,
        rows: Tensor,
        target: Tensor,
        taught: Tensor,
        reference: Any,
        head: nn.Linear | None = None,
    ) -> Tensor:
        keep = target != IGNORE_INDEX
        with_teacher = keep & taught.to(keep.device)
        without = keep & ~with_teacher
        total = rows.sum() * 0.0  # a batch with nothing to score still has a graph
        if bool(with_teacher.any()):
            total = total + self._part(
                self.taught,
                rows[with_teacher],
                target[with_teacher],
                _select(reference, with_teacher),
                head,
            )
        weight = self.hard_weight()
        if weight > 0 and bool(without.any()):
            hard = self._part(self.untaught, rows[without], target[without], None, head)
            total = total + weight * hard
        return total


def aligned_loss(
    source: Any,
    provider: Any,
    *,
    linear: bool,
    chunk_rows: int | None = None,
    generated: bool = False,
) -> AlignedLoss | None:
    """The loss for a teacher with another tokenizer (None when ``provider`` gives the
    data's vocabulary). Refused: a target source whose mode reads the teacher's logits over
    the student's own vocabulary, and generated batches (``generated``)."""
    if not has_other_vocabulary(provider):
        return None
    names = provider.tokenizers
    mode = getattr(source, "mode", None)
    if mode not in MODES or not MODES[mode].any_vocabulary:
        raise ValueError(
            f"target {getattr(source, 'name', type(source).__name__)} compares the teacher's "
            "probabilities with the student's token by token, but the teacher has another "
            f"tokenizer: teacher.tokenizer={names['teacher.tokenizer']}, "
            f"data.tokenizer={names['data.tokenizer']}. Use target=uld (Universal Logit "
            "Distillation, any vocabulary; target.hybrid=true for GOLD's hybrid)"
        )
    if generated:
        raise ValueError(
            "lm.on_policy.fraction > 0 or lm.seq_kd=true with a teacher of another tokenizer "
            f"(teacher.tokenizer={names['teacher.tokenizer']}): the teacher is aligned to the "
            "data's blocks, not to generated tokens; train on the data (fraction 0, seq_kd "
            "false)"
        )
    return AlignedLoss(source, linear=linear, chunk_rows=chunk_rows)


def _teacher_tokenizer_of(provider: Any) -> Any:
    """The teacher's tokenizer: the aligner's, or for a cache the one it records, checked."""
    aligner = getattr(provider, "aligner", None)
    if aligner is not None:
        return aligner.teacher
    alignment = provider.table.alignment
    spec = alignment["teacher.tokenizer"]
    tokenizer = load_tokenizer(spec, "teacher.tokenizer")
    if tokenizer_identity(tokenizer) != alignment["teacher_tokenizer"]:
        raise ValueError(
            f"the hybrid ULD needs the teacher's tokenizer of the cache, {spec!r}, but it has "
            "changed since the cache was written (another fingerprint)"
        )
    return tokenizer


def set_vocabulary_map(source: Any, provider: Any, datamodule: Any) -> int | None:
    """Give a hybrid ULD source (``target.hybrid=true``) its map of the tokens both
    vocabularies hold (:func:`softlabel.data.text.alignment.vocabulary_map`), once, before
    training; returns the number of matched tokens (None for any other source)."""
    if not getattr(source, "hybrid", False) or not callable(
        getattr(source, "set_vocabulary_map", None)
    ):
        return None
    student = datamodule.text_tokenizer
    teacher = _teacher_tokenizer_of(provider) if has_other_vocabulary(provider) else student
    pairs = vocabulary_map(student, teacher)
    if not len(pairs):
        raise ValueError(
            "target.hybrid=true: the student's and the teacher's vocabularies share no token"
        )
    source.set_vocabulary_map(torch.from_numpy(pairs))
    log.info("hybrid ULD: %d tokens in both vocabularies", len(pairs))
    return int(len(pairs))


#: files of a model directory that hold its tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", BYTE_TOKENIZER_FILE)


def check_own_tokenizer(pretrained: str, datamodule: Any) -> None:
    """Refuse a ``teacher.pretrained`` directory or GGUF file that holds a tokenizer other
    than the data's while ``teacher.tokenizer`` is null: its logits would be read as if its
    ids were the data's (a larger vocabulary would even pass for a padded one)."""
    path = os.path.abspath(os.path.expanduser(pretrained))
    if path == datamodule.tokenizer_path:
        return
    if not is_gguf(path) and not any(
        os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES
    ):
        return
    own = load_tokenizer(path, "teacher.pretrained")
    if tokenizer_identity(own) != datamodule.tokenizer_fingerprint:
        raise ValueError(
            f"teacher.pretrained={pretrained!r} holds its own tokenizer, "
            f"{tokenizer_name(own)}, not the data's, {tokenizer_name(datamodule.text_tokenizer)}"
            f": set teacher.tokenizer={pretrained} (a teacher with another tokenizer, with "
            "target=uld), or give the data the teacher's tokenizer (data.tokenizer)"
        )


def _context(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def aligned_teacher(
    model: nn.Module, tokenizer: str, datamodule: Any
) -> tuple[ReferenceProvider, dict[str, Any]]:
    """The provider of a teacher ``model`` whose tokenizer is ``tokenizer``
    (``teacher.tokenizer``): a plain ``LiveTeacher`` when it is the data's, else an
    :class:`AlignedTeacher` over every block of the data. Refused: an alignment without a
    single common position, and blocks whose teacher tokens exceed the teacher's context."""
    spec = os.path.abspath(os.path.expanduser(tokenizer))
    teacher_tok = load_tokenizer(spec, "teacher.tokenizer")
    student_tok = datamodule.text_tokenizer
    names = {
        "data.tokenizer": tokenizer_name(student_tok),
        "teacher.tokenizer": tokenizer_name(teacher_tok),
    }
    if tokenizer_identity(teacher_tok) == datamodule.tokenizer_fingerprint:
        return LiveTeacher(model), {"teacher_tokenizer": spec}
    aligner = TokenAligner(student_tok, teacher_tok)
    rows = model.vocab_size if hasattr(model, "vocab_size") else None
    if rows is not None and int(rows) < aligner.teacher_vocab:
        raise ValueError(
            f"the teacher has {int(rows)} output rows but teacher.tokenizer="
            f"{names['teacher.tokenizer']} has {aligner.teacher_vocab} ids: give the "
            "teacher's own tokenizer"
        )
    dataset = datamodule.full_dataset()
    blocks = dataset.blocks[dataset.start : dataset.stop]
    lengths = dataset.lengths[dataset.start : dataset.stop]
    alignment = aligner.align(blocks, lengths)
    if alignment.aligned == 0:
        raise ValueError(
            f"teacher.tokenizer={names['teacher.tokenizer']} and data.tokenizer="
            f"{names['data.tokenizer']}: no student position of the data has a teacher "
            f"counterpart (0 of {alignment.scored}: the two tokenizations never end a token "
            "at the same byte), so the teacher has nothing to give"
        )
    context = _context(model)
    if context is not None and alignment.longest > context:
        raise ValueError(
            f"a block of data.block_size={datamodule.block_size} tokens is "
            f"{alignment.longest} tokens of teacher.tokenizer={names['teacher.tokenizer']}, "
            f"more than the teacher's context ({context}): lower data.block_size"
        )
    provider = AlignedTeacher(model, alignment, blocks, lengths, aligner)
    log.info(
        "teacher.tokenizer differs from data.tokenizer: %d of %d positions (%.1f%%) have a "
        "teacher counterpart",
        alignment.aligned,
        alignment.scored,
        100 * alignment.share,
    )
    record = {
        "teacher_tokenizer": spec,
        "teacher_alignment": _alignment_record(alignment),
    }
    return provider, record
