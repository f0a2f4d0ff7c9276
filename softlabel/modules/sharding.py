"""Fully sharded data parallel training (FSDP2) of causal language models.

Lightning's ``ModelParallelStrategy`` (``trainer=fsdp2``) starts the processes, builds their
device mesh and calls ``LightningModule.configure_model``, where
``CausalLMModule.configure_model`` calls :func:`shard_causal_lm`: torch's ``fully_shard``
on each transformer block (the classes the ``transformers`` model names in its
``_no_split_modules``, as accelerate's FSDP auto-wrap does), then on the whole model, the
root. The root's group holds the embeddings, the final norm and the head, so a head tied
to the input embedding is one parameter in one group (``fully_shard`` refuses a parameter
shared between two groups). A live teacher is sharded the same way; it is frozen, so it
has neither gradients nor optimizer state.

Outside a sharded model's forward its parameters are ``DTensor`` shards: whatever reads a
weight does so inside the forward (``CausalLM.forward(..., head_loss=fn)``), and the
exported model is gathered first (:func:`full_state_dict`). Zhao et al. (2023), "PyTorch
FSDP: experiences on scaling fully sharded data parallel"; torch's FSDP2 documentation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = [
    "FSDP2_SETTING",
    "blocks_to_shard",
    "full_state_dict",
    "is_sharded",
    "mixed_precision_policy",
    "shard_causal_lm",
]

#: how messages name the strategy (the trainer option that selects it)
FSDP2_SETTING = "trainer=fsdp2 (lightning's ModelParallelStrategy)"


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "model_type", None) or type(model).__name__)


def blocks_to_shard(model: nn.Module, role: str) -> list[nn.Module]:
    """The transformer blocks of ``model`` (a ``softlabel.models.CausalLM``) that get their
    own ``fully_shard``: the modules whose class the ``transformers`` model names in
    ``_no_split_modules``. A ValueError naming ``role`` (``student``, ``teacher``) and the
    model type when there is none: the model cannot be sharded block by block."""
    inner = getattr(model, "model", None)
    names = getattr(inner, "_no_split_modules", None) or []
    blocks = [m for m in model.modules() if type(m).__name__ in set(names)]
    if not blocks:
        what = (
            f"its block classes {sorted(names)} are not in the model"
            if names
            else "transformers names no block classes for it (_no_split_modules)"
        )
        raise ValueError(
            f"{FSDP2_SETTING} cannot shard the {role} ({type(model).__name__} of model type "
            f"{_model_type(model)!r}): {what}. Shard a transformers causal LM "
            f"({role}=hf_causal_lm with a model type such as gpt2 or llama), or train with "
            "trainer=ddp"
        )
    return blocks


def mixed_precision_policy(precision: str) -> Any:
    """FSDP2's mixed precision for Lightning's ``trainer.precision``: ``bf16-mixed`` gathers
    bfloat16 parameters and reduces gradients in float32 (the sharded parameters and the
    optimizer stay float32); any other precision gathers the parameters as they are."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if str(precision) == "bf16-mixed":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def is_sharded(model: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``model`` (its root)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_causal_lm(model: nn.Module, mesh: Any, policy: Any, role: str) -> None:
    """``fully_shard`` each block of ``model`` (:func:`blocks_to_shard`), then the model, over
    the one-dimensional data-parallel ``mesh``."""
    from torch.distributed.fsdp import fully_shard

    for block in blocks_to_shard(model, role):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def full_state_dict(model: nn.Module) -> dict[str, Any] | None:
    """The whole state dict of a sharded ``model`` on CPU in global rank 0, None on the
    other ranks; every rank must call it (the shards are gathered)."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    return state if dist.get_rank() == 0 else None
