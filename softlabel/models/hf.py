"""Hugging Face causal language models behind softlabel's model interface.

``hf_causal_lm`` builds any ``transformers`` ``AutoModelForCausalLM``, either from a local
directory or GGUF file (``pretrained=DIR`` or ``pretrained=FILE.gguf``, local files only
and never code from the directory: ``softlabel._hf_files``) or from a config (``config={model_type: gpt2, n_layer: 2, ...}``, random init through
``AutoModelForCausalLM.from_config``), and wraps it in :class:`CausalLM`:

- ``model(input_ids)`` -> logits ``(B, L, V)``;
- ``model.features(input_ids)`` -> final hidden states ``(B, L, H)`` and ``model.head``
  the output projection, so that the linear-head loss never builds the ``(B, L, V)``
  logits (``softlabel.LinearSoftTargetLoss``); ``model(input_ids, head_loss=fn)`` runs
  ``fn(features, head)`` inside the forward, which a sharded model needs;
- ``model.save_pretrained(dir)`` writes the Hugging Face format.

``transformers`` is an optional dependency (``pip install softlabel[hf]``), imported only
when a model is built.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from softlabel._hf_files import (
    LOCAL,
    check_no_custom_code,
    gguf_architecture,
    gguf_location,
    is_gguf,
)

__all__ = ["CausalLM", "check_vocabularies", "hf_causal_lm"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            "student/teacher=hf_causal_lm needs the transformers package: "
            "pip install 'softlabel[hf]'"
        ) from error
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


class CausalLM(nn.Module):
    """A ``transformers`` causal LM: ``forward(input_ids, attention_mask=None)`` returns the
    logits ``(B, L, V)``; ``features`` / ``head`` split off the output projection.

    ``linear_head`` is True when ``head(features(x)) == model(x).logits`` (checked once on a
    few tokens when built): false for models that scale or soft-cap their logits after the
    head, which then train on materialized logits.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.linear_head = False

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def vocab_size(self) -> int:
        """Rows of the output projection (may exceed the tokenizer's vocabulary: padding)."""
        return int(self.head.weight.shape[0])

    @property
    def head(self) -> nn.Linear:
        head = self.model.get_output_embeddings()
        if not isinstance(head, nn.Linear):
            raise TypeError(
                f"{type(self.model).__name__}'s output embeddings are a "
                f"{type(head).__name__}, not an nn.Linear"
            )
        return head

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        head_loss: Callable[[Tensor, nn.Linear], Any] | None = None,
    ) -> Any:
        """The logits ``(B, L, V)``; with ``head_loss``, ``head_loss(features, head)``
        instead, computed inside this forward: where a sharded model (FSDP2) has gathered
        its head weight, so that the linear-head loss reads the whole weight and its
        gradient reaches the shards (Liger-Kernel and TRL run fused losses the same way)."""
        if head_loss is not None:
            return head_loss(self.features(input_ids, attention_mask), self.head)
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The final hidden states ``(B, L, H)`` that the head maps to logits."""
        out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state

    @torch.no_grad()
    def check_linear_head(self) -> bool:
        """Set and return ``linear_head``: whether ``head(features(x))`` gives the logits."""
        was_training = self.training
        self.eval()
        ids = torch.arange(4, device=self.head.weight.device).reshape(1, 4) % self.vocab_size
        try:
            logits = self(ids).float()
            rebuilt = self.head(self.features(ids)).float()
            scale = logits.abs().max().clamp_min(1.0)
            self.linear_head = bool(((logits - rebuilt).abs().max() <= 1e-3 * scale).item())
        except Exception:  # noqa: BLE001 - an architecture without a plain head
            self.linear_head = False
        self.train(was_training)
        return self.linear_head

    def save_pretrained(
        self, directory: str, tokenizer: Any = None, state_dict: Mapping[str, Tensor] | None = None
    ) -> None:
        """Hugging Face format (``config.json``, safetensors weights; the tokenizer too when
        given), loadable with ``AutoModelForCausalLM.from_pretrained(directory)``.
        ``state_dict``: this module's weights to write instead of its own (e.g. a sharded
        model's, gathered: ``softlabel.modules.sharding.full_state_dict``)."""
        extra = {}
        if state_dict is not None:
            weights = {k.removeprefix("model."): v for k, v in state_dict.items()}
            # a tied parameter (a head tied to the input embedding) is one tensor under all
            # its names, as in the model's own state dict, so it is written once
            first: dict[int, str] = {}
            for name, param in self.model.named_parameters(remove_duplicate=False):
                key = first.setdefault(id(param), name)
                if key != name and key in weights:
                    weights[name] = weights[key]
            extra["state_dict"] = weights
        self.model.save_pretrained(directory, safe_serialization=True, **extra)
        if tokenizer is not None and callable(getattr(tokenizer, "save_pretrained", None)):
            tokenizer.save_pretrained(directory)


def _config_from_mapping(
    transformers: Any,
    config: Mapping[str, Any],
    vocab_size: int | None,
    special_tokens: Mapping[str, int | None],
) -> Any:
    params = dict(config)
    model_type = params.pop("model_type", None)
    if not model_type:
        raise ValueError(
            f"config={dict(config)!r} needs a model_type, e.g. "
            "config={model_type: gpt2, n_layer: 2, n_embd: 128, n_head: 4}"
        )
    if vocab_size is not None:
        given = params.get("vocab_size")
        if given is not None and int(given) < vocab_size:
            raise ValueError(
                f"config.vocab_size={given} is smaller than the data's vocabulary "
                f"({vocab_size} token ids); leave it out (the data's size is used) or "
                f"set it >= {vocab_size}"
            )
        params.setdefault("vocab_size", vocab_size)
    for name, value in special_tokens.items():
        if value is not None:
            params.setdefault(name, int(value))
    try:
        return transformers.AutoConfig.for_model(str(model_type), **params)
    except ValueError as error:
        raise ValueError(f"config.model_type={model_type!r}: {error}") from error


def _from_directory(transformers: Any, path: str, setting: str, dtype: torch.dtype) -> Any:
    """A model saved by ``save_pretrained`` in ``path`` (no code from the directory)."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        what = "does not exist" if not os.path.exists(path) else "has no config.json"
        raise FileNotFoundError(
            f"{setting}={path!r}: {what}; give a local directory written by save_pretrained "
            "or a .gguf file (models are never downloaded)"
        )
    check_no_custom_code(path, setting, "model")
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **LOCAL)


def _from_gguf(transformers: Any, path: str, setting: str, dtype: torch.dtype) -> Any:
    """A causal LM from a GGUF file: ``transformers`` dequantizes it to float32, and its
    weights are loaded into a plain model of the same config (the dequantized model is
    marked quantized and could not be saved with ``save_pretrained``)."""
    directory, name = gguf_location(path, setting)
    architecture = gguf_architecture(path, setting)
    try:
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=name, dtype=torch.float32, **LOCAL
        )
    except (ValueError, KeyError, OSError) as error:
        raise ValueError(
            f"{setting}={path!r}: a GGUF file of architecture {architecture!r} that "
            f"transformers cannot load as a causal language model ({type(error).__name__}: "
            f"{str(error).strip()[:300]})"
        ) from error
    params = loaded.config.to_dict()
    params.pop("quantization_config", None)
    params.pop("_name_or_path", None)
    config = type(loaded.config).from_dict(params)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    return model.to(dtype).eval()


def hf_causal_lm(
    pretrained: str | None = None,
    config: Mapping[str, Any] | None = None,
    *,
    num_classes: int | None = None,
    dtype: str = "float32",
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    setting: str = "pretrained",
) -> CausalLM:
    """A ``transformers`` causal LM from a local directory, a GGUF file or a config.

    Exactly one of ``pretrained`` (a local directory holding ``config.json`` and weights,
    or a ``.gguf`` file, which needs ``softlabel[gguf]``; local files only and
    ``trust_remote_code=False``) and ``config`` (a mapping with ``model_type`` and that
    model's config fields; random initialisation) is given. ``num_classes`` is the data's
    vocabulary: a built model gets ``vocab_size = num_classes`` unless the config sets a
    larger one; a pretrained model must have at least that many output rows. ``dtype``:
    float32, bfloat16 or float16 weights (a frozen teacher may use bfloat16; a student
    trains in float32 and uses ``trainer.precision`` for mixed precision). ``setting``
    names ``pretrained`` in error messages (e.g. ``teacher.pretrained``).
    """
    if (pretrained is None) == (config is None):
        raise ValueError(
            "hf_causal_lm needs exactly one of pretrained=DIR (a local Hugging Face model "
            "directory or .gguf file) and config={model_type: ..., ...} (a new model), got "
            f"pretrained={pretrained!r}, config={None if config is None else dict(config)!r}"
        )
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not allowed; use one of {sorted(DTYPES)}")
    transformers = _transformers()
    special = {"eos_token_id": eos_token_id, "bos_token_id": eos_token_id}
    special["pad_token_id"] = pad_token_id
    if pretrained is not None:
        path = os.path.abspath(os.path.expanduser(os.fspath(pretrained)))
        load = _from_gguf if is_gguf(path) else _from_directory
        model = load(transformers, path, setting, DTYPES[dtype])
    else:
        assert config is not None
        hf_config = _config_from_mapping(transformers, config, num_classes, special)
        model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=DTYPES[dtype])
    wrapped = CausalLM(model)
    if num_classes is not None and wrapped.vocab_size < int(num_classes):
        raise ValueError(
            f"the model has {wrapped.vocab_size} output rows but the data's tokenizer has "
            f"{int(num_classes)} token ids: use a model of this tokenizer's vocabulary"
        )
    wrapped.check_linear_head()
    return wrapped


def check_vocabularies(student_vocab: int, teacher_vocab: int, data_vocab: int) -> int:
    """The number of teacher logits used: ``student_vocab``.

    Student and teacher share a tokenizer (``data_vocab`` ids). A teacher whose vocabulary
    is a padded superset of the student's (``teacher_vocab > student_vocab >= data_vocab``,
    the extra rows being padding no tokenizer id reaches) is aligned by using its first
    ``student_vocab`` logits, softmax renormalised over them (the padding rows' mass, which
    training drives to ~0, is dropped). Any other combination is refused before training.
    """
    if student_vocab < data_vocab:
        raise ValueError(
            f"the student has {student_vocab} output rows but the tokenizer has {data_vocab} ids"
        )
    if teacher_vocab >= student_vocab:
        return student_vocab
    raise ValueError(
        f"vocabulary mismatch: the teacher has {teacher_vocab} output rows and the student "
        f"{student_vocab} (tokenizer: {data_vocab} ids). Student and teacher must share a "
        "tokenizer; a teacher vocabulary may only be a padded superset of the student's "
        "(teacher rows >= student rows)"
    )
