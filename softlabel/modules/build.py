"""Building the pieces of a training run from a composed Hydra config, one way for every
data kind (classification data and ``data=text``): the data module, the models, the loss,
the scheduler, the reference provider and the LightningModule.

Every builder checks its inputs before training starts: a missing teacher, an unreadable
checkpoint, a model of the wrong architecture, class count, vocabulary or context length
is reported up front. The reference provider is the one that the ``teacher`` or
``previous`` config names by ``_target_`` (:mod:`softlabel.modules.providers`); frozen
models come from :mod:`softlabel.modules.frozen`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import get_object, instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import nn

from softlabel.modules.references import ReferenceProvider

__all__ = [
    "CAUSAL_LM",
    "absolute_path",
    "build_datamodule",
    "build_loss",
    "build_model",
    "build_module",
    "build_reference_provider",
    "check_context",
    "is_causal_lm",
    "model_label",
    "output_dim",
    "plain",
    "scheduler_parts",
]

#: ``datamodule.task`` of ``data=text`` (causal language modelling)
CAUSAL_LM = "causal_lm"
#: the config node naming the reference provider of each reference kind
REFERENCE_ROLES = {"teacher_logits": "teacher", "previous_probs": "previous"}
#: how messages name the model of a config node
_LABELS = {"previous": "previous model"}
#: config keys of a model's context length, in the order they are looked up
_CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length")


def absolute_path(path: str) -> str:
    """``path`` made absolute against the directory the command was started from."""
    try:
        return to_absolute_path(str(path))
    except ValueError:  # Hydra not initialised (programmatic use): relative to the cwd
        return os.path.abspath(str(path))


def plain(node: Any) -> Any:
    """``node`` as plain Python containers, interpolations resolved (a mapping or list that
    is no OmegaConf node is returned as it is)."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def build_datamodule(cfg: DictConfig) -> Any:
    """Instantiate ``cfg.data`` and set it up for fitting, so its properties are known."""
    # The split is seeded by data.seed (shared by teacher and students); the train
    # order by the run's seed unless the data config sets shuffle_seed.
    extra = {}
    if cfg.data.get("shuffle_seed") is None and cfg.get("seed") is not None:
        extra["shuffle_seed"] = int(cfg.seed)
    datamodule = instantiate(cfg.data, **extra)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def is_causal_lm(datamodule: Any) -> bool:
    """Whether ``datamodule`` holds text blocks for a causal language model."""
    return getattr(datamodule, "task", None) == CAUSAL_LM


def output_dim(datamodule: Any) -> int:
    """Number of model outputs: 1 logit for a binary task, K otherwise (the vocabulary of a
    causal LM)."""
    return 1 if datamodule.task == "binary" else int(datamodule.num_classes)


def build_model(
    model_cfg: Any, datamodule: Any, *, pretrained: str | None = None, role: str = "student"
) -> nn.Module:
    """A model from its config (``_target_`` and arguments), sized to the data.

    Classification data: the target gets ``input_shape`` and ``num_classes`` when it takes
    them and the config does not set them. Causal LMs: ``num_classes`` is the tokenizer's
    vocabulary and the end / padding token ids come from it; ``pretrained`` (or the node's
    own ``pretrained``) loads a local Hugging Face directory, whose ``config.json`` then
    defines the architecture. A causal LM whose context is shorter than ``data.block_size``
    is refused. Errors name the model by ``role``, its config node (student, teacher,
    previous).
    """
    from softlabel.models import build_model as build

    params = plain(model_cfg)
    if not isinstance(params, Mapping):
        return build(params, tuple(datamodule.input_shape), output_dim(datamodule))
    params = dict(params)
    lm = is_causal_lm(datamodule)
    if lm:
        if pretrained is not None or params.get("pretrained") is not None:
            params["pretrained"] = absolute_path(pretrained or params["pretrained"])
            params["config"] = None
            if str(params.get("_target_", "")).endswith("hf_causal_lm"):
                params.setdefault("setting", f"{role}.pretrained")  # named in its errors
        for name in ("eos_token_id", "pad_token_id"):
            value = getattr(datamodule, name, None)
            if value is not None and "_target_" in params:
                params.setdefault(name, int(value))
    try:
        model = build(params, tuple(datamodule.input_shape), output_dim(datamodule))
    except ValueError as error:
        label = model_label(role)
        if str(error).startswith((f"the {label}", f"{role}.pretrained=")):
            raise
        where = f" ({role}.pretrained={params['pretrained']!r})" if params.get("pretrained") else ""
        raise ValueError(f"the {label}{where}: {error}") from error
    if lm:
        check_context(model, int(datamodule.input_shape[-1]), role)
    return model


def model_label(role: str) -> str:
    """How messages name the model of the config node ``role``: ``previous`` -> ``previous
    model``."""
    return _LABELS.get(role, role)


def check_context(model: nn.Module, block_size: int, role: str) -> None:
    """ValueError when ``block_size`` tokens exceed the positions the model's config allows
    (``n_positions``, ``max_position_embeddings``, ...): the model would fail at its first
    step, or run beyond the context it was built for."""
    config = getattr(model, "config", None)
    for name in _CONTEXT_KEYS:
        limit = getattr(config, name, None)
        if isinstance(limit, int) and not isinstance(limit, bool):
            break
    else:
        return
    if block_size > limit:
        label = model_label(role)
        raise ValueError(
            f"data.block_size={block_size} is longer than the {label}'s context: its config "
            f"has {name}={limit}; use data.block_size <= {limit}, or a {label} with a longer "
            "context"
        )


def build_loss(cfg: DictConfig, datamodule: Any) -> nn.Module:
    """``SoftTargetLoss(instantiate(cfg.target))``; a class prior without given values is
    estimated from the training split's class counts."""
    from softlabel import SoftTargetLoss
    from softlabel.targets import ClassPrior

    source = instantiate(cfg.target)
    if isinstance(source, ClassPrior) and not source.has_prior:
        source.set_class_counts(torch.as_tensor(datamodule.class_counts, dtype=torch.float64))
    return SoftTargetLoss(source)


def _missing_provider(role: str, node: Any) -> ValueError:
    if node is not None and "kind" in node:
        return ValueError(
            f"{role}.kind={node.get('kind')!r}: the {role} config names its provider by "
            "_target_ now (softlabel.modules.providers.live_teacher, cached_teacher or "
            f"previous_model); pick a shipped option, e.g. {role}="
            + ("mlp_large" if role == "teacher" else "mlp")
        )
    if role == "teacher":
        return ValueError(
            "this target needs a teacher, but teacher=none: pick one, e.g. "
            "teacher=mlp_large teacher.checkpoint=PATH, or teacher=cached teacher.cache=DIR"
        )
    return ValueError(
        "this target needs a previous model, but the previous config has no _target_: "
        "give previous.checkpoint=PATH (previous=none: the student's architecture)"
    )


def build_reference_provider(
    cfg: DictConfig, reference: str | None, datamodule: Any, student: nn.Module | None = None
) -> tuple[ReferenceProvider | None, dict[str, Any]]:
    """The provider for the source's ``reference`` kind, and what to record about it.

    ``teacher_logits`` is provided by ``cfg.teacher``, ``previous_probs`` by
    ``cfg.previous``: the node's ``_target_`` is called with its other keys (missing ones
    as None; ``model`` as a plain mapping) and ``datamodule``, ``student`` (the built
    student, when there is one) and ``student_config``. It returns a
    :class:`ReferenceProvider` or ``(provider, record)``.
    """
    if reference is None:
        return None, {}
    if reference not in REFERENCE_ROLES:
        raise ValueError(
            f"unknown reference kind {reference!r}; allowed: None, "
            + ", ".join(map(repr, REFERENCE_ROLES))
        )
    role = REFERENCE_ROLES[reference]
    node = cfg.get(role)
    if node is None or node.get("_target_") is None:
        raise _missing_provider(role, node)
    params = {
        str(k): None if OmegaConf.is_missing(node, k) else plain(node[k])
        for k in node
        if k != "_target_"
    }
    factory = get_object(str(node._target_))
    result = factory(
        **params,
        datamodule=datamodule,
        student=student,
        student_config=plain(cfg.get("student")),
    )
    provider, record = result if isinstance(result, tuple) else (result, {})
    if not isinstance(provider, ReferenceProvider):
        raise TypeError(
            f"{role}._target_={node._target_!r} returned {type(provider).__name__}, "
            "not a ReferenceProvider"
        )
    if provider.kind != reference:
        raise ValueError(
            f"{role}._target_={node._target_!r} provides {provider.kind!r}, but the target "
            f"needs {reference!r}"
        )
    return provider, dict(record)


def scheduler_parts(cfg: DictConfig) -> tuple[Any, str]:
    """``(factory or None, interval)`` from ``cfg.scheduler`` (``interval`` is not passed on)."""
    node = cfg.get("scheduler")
    if node is None or "_target_" not in node:
        return None, "step"
    params: Mapping[str, Any] = OmegaConf.to_container(node, resolve=True)  # type: ignore[assignment]
    params = dict(params)
    interval = params.pop("interval", "step")
    return instantiate(params, _partial_=True), interval


def lm_generation(cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
    """The checked on-policy / seq_kd options of a causal-LM run (``cfg.lm``), see
    :func:`softlabel.modules.lm_generation.lm_generation_options`; called before any model
    is built, so a bad setting costs nothing."""
    from softlabel.modules.lm_generation import lm_generation_options

    teacher = cfg.get("teacher") or {}
    block_size = int(datamodule.input_shape[-1])
    return lm_generation_options(cfg.get("lm"), block_size, teacher.get("_target_"))


def build_module(
    cfg: DictConfig,
    datamodule: Any,
    student: nn.Module,
    loss: nn.Module,
    provider: ReferenceProvider | None,
    *,
    seq_kd_teacher: nn.Module | None = None,
) -> Any:
    """The LightningModule of the run: ``CausalLMModule`` for ``data=text`` (``cfg.lm``:
    the linear-head loss and its chunk size, on-policy and seq_kd generation;
    ``seq_kd_teacher`` generates when the target needs no teacher reference),
    ``SoftLabelModule`` otherwise."""
    optimizer = instantiate(cfg.optimizer, _partial_=True)
    scheduler, interval = scheduler_parts(cfg)
    common = {
        "optimizer": optimizer,
        "scheduler": scheduler,
        "scheduler_interval": interval,
        "reference_provider": provider,
    }
    if is_causal_lm(datamodule):
        from softlabel.modules.lm_metrics import token_byte_lengths
        from softlabel.modules.lm_module import CausalLMModule

        lm = cfg.get("lm") or {}
        return CausalLMModule(
            student,
            loss,
            **common,
            vocab_size=int(getattr(student, "vocab_size", datamodule.vocab_size)),
            linear_head=bool(lm.get("linear_head", True)),
            chunk_rows=lm.get("chunk_rows"),
            seq_kd_teacher=seq_kd_teacher,
            eos_token_id=getattr(datamodule, "eos_token_id", None),
            pad_token_id=getattr(datamodule, "pad_token_id", None),
            seed=int(cfg.get("seed") or 0),
            token_bytes=token_byte_lengths(datamodule.text_tokenizer),
            **lm_generation(cfg, datamodule),
        )
    from softlabel.modules.soft_label_module import SoftLabelModule

    return SoftLabelModule(
        student,
        loss,
        **common,
        task=datamodule.task,
        num_classes=output_dim(datamodule),
    )
