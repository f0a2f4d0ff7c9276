"""``CausalLMModule``: a causal language model trained with a soft-target loss, token-level.

Each batch ``(input_ids, labels, index)`` holds blocks of ``L`` tokens; ``labels`` equal
the inputs with ``-100`` on padding. The causal shift happens here and only here, as in
transformers' ``ForCausalLMLoss``: the logits at positions ``0..L-2`` are scored against
``labels[:, 1:]``. The student's head runs inside the linear-head loss
(``softlabel.LinearSoftTargetLoss``: no ``(B, L, V)`` logits with gradients) whenever the
model and the target source allow it; a live teacher then gives its final hidden states
and head weight. Both are read inside the models' forwards (``head_loss``), where a model
sharded with FSDP2 (``trainer=fsdp2``, :meth:`CausalLMModule.configure_model`) has
gathered them.

Loss normalisation: the training loss is the token-summed loss divided by the number of
non-ignored tokens of the whole optimizer step, over every micro-batch of gradient
accumulation and every process, so ``accumulate_grad_batches=a`` with micro-batches
``b`` gives the gradient of one batch of ``a*b`` blocks (the problem TRL fixed with
``num_items_in_batch``). Each micro-batch backpropagates its token sum; before the
optimizer step (and before gradient clipping) the gradients are multiplied by
``a * world_size / N_step``, undoing Lightning's division by ``a`` and the data-parallel
mean over processes. Only scored tokens count: on a generated batch, the continuation's.

Generated batches (``softlabel.modules.lm_generation``): with ``on_policy_fraction`` > 0
(GKD's ``lmbda``) that share of the micro-batches is replaced by the student's sampled
continuations of the blocks' prompts, with ``seq_kd`` the other batches by the teacher's;
the teacher then scores exactly those ids, and the prompt positions are ignored.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from softlabel.modules.cross_tokenizer import aligned_loss
from softlabel.modules.lm_generation import (
    GenerationSettings,
    check_fraction,
    draws_on_policy,
    generate_continuations,
    hf_generator,
)
from softlabel.modules.lm_metrics import build_lm_metrics
from softlabel.modules.references import FrozenModelProvider, LiveTeacher, ReferenceProvider
from softlabel.modules.soft_label_module import SoftLabelModule

__all__ = ["IGNORE_INDEX", "CausalLMModule", "next_tokens", "shift_for_causal_lm"]

IGNORE_INDEX = -100


def shift_for_causal_lm(values: Any) -> Any:
    """Drop the last position (logits, hidden states, references at ``0..L-2``): the
    prediction at position ``t`` is scored against the token at ``t + 1``
    (:func:`next_tokens`). A tuple of tensors (a top-k reference) is shifted field by field."""
    if isinstance(values, tuple):
        return type(values)(*(shift_for_causal_lm(v) for v in values))
    return values[:, :-1]


def next_tokens(labels: Tensor) -> Tensor:
    """The targets of positions ``0..L-2``: ``labels[:, 1:]``."""
    return labels[:, 1:]


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """A warning shown once per process and message."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


class CausalLMModule(SoftLabelModule):
    """Train a causal LM ``student`` (``softlabel.models.CausalLM`` or any module with
    ``forward(input_ids) -> (B, L, V)``) with ``loss`` (a ``SoftTargetLoss``). A model
    with ``linear_head`` True also takes ``forward(input_ids, head_loss=fn)`` and returns
    ``fn(features, head)`` (``CausalLM``).

    ``vocab_size``: the number of logits scored (the student's). ``teacher_vocab``: how many
    of the teacher's logits to use (``vocab_size`` when the teacher's vocabulary is a padded
    superset; see ``softlabel.models.hf.check_vocabularies``). ``linear_head``: use the
    linear-head loss when possible (False: always materialize the logits).

    ``generation`` (prompt and sampling settings), ``on_policy_fraction`` (the share of
    micro-batches the student continues), ``seq_kd`` (the teacher continues the others;
    ``seq_kd_teacher`` is that teacher when the target needs no teacher reference, e.g.
    ``target=hard``: Kim and Rush's sequence-level KD), ``eos_token_id`` and
    ``pad_token_id`` (the data's) and ``seed`` (of the on-policy draws) configure
    generated batches; see ``softlabel.modules.lm_generation``. ``token_bytes`` (V,): the
    UTF-8 bytes of each id, for the ``bpb`` metric (None: no ``bpb``).
    """

    def __init__(
        self,
        student: nn.Module,
        loss: nn.Module,
        *,
        optimizer: Any,
        scheduler: Any = None,
        scheduler_interval: str = "step",
        reference_provider: ReferenceProvider | None = None,
        vocab_size: int,
        linear_head: bool = True,
        chunk_rows: int | None = None,
        generation: GenerationSettings | None = None,
        on_policy_fraction: float = 0.0,
        seq_kd: bool = False,
        seq_kd_teacher: nn.Module | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        seed: int = 0,
        token_bytes: Tensor | None = None,
    ) -> None:
        super().__init__(
            student,
            loss,
            optimizer=optimizer,
            scheduler=scheduler,
            scheduler_interval=scheduler_interval,
            reference_provider=reference_provider,
            task="multiclass",
            num_classes=int(vocab_size),
        )
        from softlabel import LinearSoftTargetLoss, SoftTargetLoss

        self.task = "causal_lm"
        self.vocab_size = int(vocab_size)
        metrics = build_lm_metrics(self.vocab_size, IGNORE_INDEX, token_bytes)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        source = loss.source
        self.sum_loss = SoftTargetLoss(source, ignore_index=IGNORE_INDEX, reduction="sum")
        self.observes = source.observes
        usable = (
            bool(linear_head)
            and source.linear_head
            and getattr(student, "linear_head", False)
            and self._teacher_rows_available(source)
        )
        if linear_head and getattr(student, "linear_head", False) and not source.linear_head:
            _warn_once(
                f"target {source.name}: the loss runs on materialized (B, L, V) logits, not "
                "through the linear head, because "
                + (source.fallback or "the source reads each training batch's logits")
            )
        self.linear_loss = (
            LinearSoftTargetLoss(
                source, ignore_index=IGNORE_INDEX, reduction="sum", chunk_rows=chunk_rows
            )
            if usable
            else None
        )
        self._step_tokens: Tensor | None = None
        self.generation = generation
        self.on_policy_fraction = check_fraction(on_policy_fraction)
        self.seq_kd = bool(seq_kd)
        self.seed = int(seed)
        self.special_tokens = (eos_token_id, pad_token_id)
        # a teacher with another tokenizer: its rows at some positions only (None otherwise)
        self.aligned_loss = aligned_loss(
            source,
            reference_provider,
            linear=self.linear_loss is not None,
            chunk_rows=chunk_rows,
            generated=self.on_policy_fraction > 0 or self.seq_kd,
        )
        # a frozen teacher used only to generate: held outside the module tree (a list is
        # not registered), so it is never in a checkpoint; moved to the batch's device
        self._seq_kd_teacher = [seq_kd_teacher] if seq_kd_teacher is not None else []
        #: seconds spent generating continuations (on-policy and seq_kd) in this process
        self.generation_time_s = 0.0
        self._check_generation()

    def _check_generation(self) -> None:
        """Refuse generated batches that cannot be scored, before training."""
        on_policy, seq_kd = self.on_policy_fraction > 0, self.seq_kd
        if not (on_policy or seq_kd):
            return
        names = "lm.on_policy.fraction" if on_policy else "lm.seq_kd"
        if self.generation is None:
            raise ValueError(f"{names} needs the prompt and sampling settings (generation)")
        if None in self.special_tokens:
            raise ValueError(f"{names} needs the data's eos_token_id and pad_token_id")
        provider = self.reference_provider
        if provider is not None and not isinstance(provider, FrozenModelProvider):
            raise ValueError(
                f"{names} with a {type(provider).__name__} ({provider.role} values stored "
                "for the data's tokens): generated tokens must be scored by a live model. "
                "Use teacher=hf_causal_lm teacher.pretrained=DIR_OR_GGUF (a cache only "
                "holds the teacher on the data's own tokens)"
            )
        if on_policy:
            if provider is None:
                raise ValueError(
                    f"lm.on_policy.fraction={self.on_policy_fraction} with a target that "
                    "needs no teacher: the student's own samples as hard labels teach it "
                    "nothing. Use a teacher target (target=kd, kd_reverse, kd_jsd, ...) "
                    "with teacher=hf_causal_lm"
                )
            hf_generator(self.student, "student")
        if seq_kd:
            hf_generator(self._sequence_teacher(), "teacher")

    def _sequence_teacher(self) -> nn.Module:
        """The model that generates seq_kd continuations: the live teacher."""
        provider = self.reference_provider
        if isinstance(provider, LiveTeacher):
            return provider.model
        if self._seq_kd_teacher:
            return self._seq_kd_teacher[0]
        raise ValueError(
            "lm.seq_kd=true needs a teacher model to generate: teacher=hf_causal_lm "
            "teacher.pretrained=DIR_OR_GGUF (or teacher.checkpoint=PATH)"
        )

    def generated_batch(
        self, input_ids: Tensor, labels: Tensor, batch_idx: int
    ) -> tuple[Tensor, Tensor, str]:
        """``(input_ids, labels, origin)`` of this micro-batch: the data (``"data"``), the
        student's continuations (``"student"``, a share ``on_policy_fraction``) or the
        teacher's (``"teacher"``, with ``seq_kd``)."""
        step = int(self.global_step) if self._trainer is not None else 0
        if draws_on_policy(self.on_policy_fraction, self.seed, step, batch_idx):
            model, origin = self.student, "student"
        elif self.seq_kd:
            model, origin = self._sequence_teacher(), "teacher"
            first = next(iter(model.parameters()), None)
            if first is not None and first.device != input_ids.device:
                model.to(input_ids.device)
        else:
            return input_ids, labels, "data"
        assert self.generation is not None
        eos, pad = self.special_tokens
        start = time.perf_counter()
        ids, new_labels = generate_continuations(
            model, input_ids, labels, self.generation, eos_token_id=eos, pad_token_id=pad
        )
        self.generation_time_s += time.perf_counter() - start
        return ids, new_labels, origin

    def _teacher_rows_available(self, source: Any) -> bool:
        """Whether the teacher reaches the linear-head loss: a live teacher with a head, or a
        cache (dense logits or a top-k reference); always for sources without a teacher."""
        if source.reference != "teacher_logits":
            return True
        if self._live_teacher() is not None:
            return source.accepts("head")
        return not isinstance(self.reference_provider, FrozenModelProvider)

    def _live_teacher(self) -> nn.Module | None:
        """The frozen teacher model when it can give hidden states and a head."""
        provider = self.reference_provider
        if provider is None or provider.kind != "teacher_logits":
            return None
        model = (
            getattr(provider, "model", None) if isinstance(provider, FrozenModelProvider) else None
        )
        if model is None or not getattr(model, "linear_head", False):
            return None
        return model

    # ---------------------------------------------------------------- sharding
    def _frozen_model(self) -> tuple[nn.Module, str] | None:
        """``(model, role)`` of the frozen model the provider runs (a live teacher, a
        previous model), or None."""
        provider = self.reference_provider
        if isinstance(provider, FrozenModelProvider):
            return provider.model, provider.role
        return None

    def check_shardable(self) -> None:
        """Refuse, naming the setting, a run that ``trainer=fsdp2`` cannot shard: generated
        batches (transformers' ``generate`` calls the model outside its sharded forward) and
        models without known transformer blocks (``softlabel.modules.sharding``)."""
        from softlabel.modules.sharding import FSDP2_SETTING, blocks_to_shard

        if self.on_policy_fraction > 0 or self.seq_kd:
            name = "lm.on_policy.fraction" if self.on_policy_fraction > 0 else "lm.seq_kd"
            raise ValueError(
                f"{name} with {FSDP2_SETTING}: transformers' generate runs the model outside "
                "its sharded forward, so generated batches are not sharded; train them with "
                "trainer=ddp (or trainer=gpu)"
            )
        blocks_to_shard(self.student, "student")
        frozen = self._frozen_model()
        if frozen is not None:
            blocks_to_shard(*frozen)

    def configure_model(self) -> None:
        """Under Lightning's ``ModelParallelStrategy`` (``trainer=fsdp2``): shard the
        student and the frozen model of a live teacher or previous model with FSDP2 over
        the data-parallel mesh, in ``trainer.precision``'s mixed precision
        (``softlabel.modules.sharding``). Nothing under any other strategy."""
        mesh = self.device_mesh
        if mesh is None:
            return
        from softlabel.modules.sharding import (
            FSDP2_SETTING,
            is_sharded,
            mixed_precision_policy,
            shard_causal_lm,
        )

        if is_sharded(self.student):  # Lightning calls it again to validate and test
            return
        if mesh["tensor_parallel"].size() != 1:
            raise ValueError(
                f"trainer.strategy.tensor_parallel_size={mesh['tensor_parallel'].size()} with "
                f"{FSDP2_SETTING}: softlabel shards data-parallel only; set "
                "trainer.strategy.tensor_parallel_size=1 and data_parallel_size to the "
                "number of processes"
            )
        self.check_shardable()
        policy = mixed_precision_policy(self.trainer.precision)
        shard_causal_lm(self.student, mesh["data_parallel"], policy, "student")
        frozen = self._frozen_model()
        if frozen is not None:
            shard_causal_lm(frozen[0], mesh["data_parallel"], policy, frozen[1])
        # The frozen model's weights are never in a checkpoint, so Lightning's loader of a
        # sharded module must not require them; the student's keys are checked before
        # training (softlabel.modules.run.resume) and the run writes its own checkpoints.
        self.strict_loading = False

    # ----------------------------------------------------------------- forward
    def forward(self, input_ids: Tensor) -> Tensor:
        """Student logits ``(B, L, V)``."""
        return self.student(input_ids)

    def _reference(self, input_ids: Tensor, index: Tensor) -> Any:
        """The provider's reference at positions ``0..L-2``, vocabulary-aligned."""
        ref = shift_for_causal_lm(self.reference_provider(input_ids, index))
        if isinstance(ref, Tensor) and ref.shape[-1] > self.vocab_size:
            ref = ref[..., : self.vocab_size]  # a padded-superset teacher
        return ref

    def token_loss_sum(self, input_ids: Tensor, labels: Tensor, index: Tensor) -> Tensor:
        """The loss summed over the non-ignored tokens of the batch."""
        target = next_tokens(labels)
        if self.aligned_loss is not None:  # a teacher with another tokenizer (cross_tokenizer)
            provider = self.reference_provider
            taught = shift_for_causal_lm(provider.aligned(input_ids, index))
            reference = shift_for_causal_lm(provider(input_ids, index))
            if self.linear_loss is None:
                logits = shift_for_causal_lm(self.student(input_ids))
                return self.aligned_loss(logits, target, taught, reference)
            aligned = self.aligned_loss

            def aligned_head_loss(hidden: Tensor, head: nn.Linear) -> Tensor:
                return aligned(shift_for_causal_lm(hidden), target, taught, reference, head)

            # inside the student's forward, where a sharded head weight is gathered
            return self.student(input_ids, head_loss=aligned_head_loss)
        source_ref = self.loss.source.reference
        if self.linear_loss is not None:
            return self._linear_loss_sum(input_ids, target, index)
        logits = shift_for_causal_lm(self.student(input_ids))
        reference = None if source_ref is None else self._reference(input_ids, index)
        loss = self.sum_loss(logits, target, reference)
        if self.observes:  # statistics a source keeps across steps (e.g. OLS)
            keep = target != IGNORE_INDEX
            self.loss.source.on_train_batch_end(logits.detach()[keep], target[keep])
        return loss

    def _linear_loss_sum(self, input_ids: Tensor, target: Tensor, index: Tensor) -> Tensor:
        """The linear-head loss, run inside the student's forward (and a live teacher's:
        ``CausalLM.forward(..., head_loss=fn)``), where a sharded model's head weight is
        gathered; without sharding the same calls read the weights in place."""
        assert self.linear_loss is not None
        linear_loss, vocab = self.linear_loss, self.vocab_size
        source_ref = self.loss.source.reference
        teacher = self._live_teacher() if source_ref == "teacher_logits" else None
        extra: dict[str, Any] = {}
        if source_ref == "teacher_logits" and teacher is None:  # a cache: dense or top-k
            extra["teacher_logits"] = self._reference(input_ids, index)
        elif source_ref == "previous_probs":
            extra["previous_probs"] = self._reference(input_ids, index)

        def student_loss(hidden: Tensor, head: nn.Linear) -> Tensor:
            hidden = shift_for_causal_lm(hidden)
            return linear_loss(hidden, head.weight, target, head.bias, **extra)

        if teacher is None:
            return self.student(input_ids, head_loss=student_loss)

        def with_teacher(t_hidden: Tensor, t_head: nn.Linear) -> Tensor:
            # the frozen teacher's parameters need no gradient: its forward records nothing
            extra["teacher_hidden"] = shift_for_causal_lm(t_hidden.detach())
            extra["teacher_weight"] = t_head.weight.detach()[:vocab]
            if t_head.bias is not None:
                extra["teacher_bias"] = t_head.bias.detach()[:vocab]
            return self.student(input_ids, head_loss=student_loss)

        return teacher(input_ids, head_loss=with_teacher)

    # ---------------------------------------------------------------- training
    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        input_ids, labels, index = batch
        input_ids, labels, _ = self.generated_batch(input_ids, labels, batch_idx)
        tokens = (next_tokens(labels) != IGNORE_INDEX).sum()
        loss_sum = self.token_loss_sum(input_ids, labels, index)
        self._step_tokens = tokens if self._step_tokens is None else self._step_tokens + tokens
        count = max(int(tokens), 1)
        self.log(
            "train/loss",
            loss_sum.detach() / count,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=count,
            sync_dist=True,
        )
        source = self.loss.source
        if self._is_logging_step():
            values = {f"train/{k}": float(v) for k, v in source.values().items()}
            if values:
                self.log_dict(values, on_step=True, on_epoch=False, batch_size=count)
        return loss_sum

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Scale the accumulated gradients of token sums to the mean over the step's tokens."""
        tokens = self._step_tokens
        self._step_tokens = None
        if tokens is None:
            return
        trainer = self.trainer
        total = trainer.strategy.reduce(tokens.detach().float(), reduce_op="sum")
        scale = trainer.accumulate_grad_batches * trainer.world_size / total.clamp_min(1.0)
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad.mul_(scale.to(param.grad.dtype))

    # -------------------------------------------------------------- evaluation
    def _evaluate(self, batch: tuple[Tensor, Tensor, Tensor], metrics: Any) -> None:
        input_ids, labels, _ = batch
        target = next_tokens(labels)
        metrics.update(shift_for_causal_lm(self.student(input_ids)), target)
        tokens = max(int((target != IGNORE_INDEX).sum()), 1)
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=tokens)

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def test_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        input_ids, _, index = batch
        return {"index": index, "logits": self.student(input_ids)}

    def monitor_keys(self) -> list[str]:
        names = [*self.val_metrics.keys(), "train/loss", "train/loss_step", "train/loss_epoch"]
        names += [f"train/{k}" for k in self.loss.source.values()]
        return sorted(set(names))
