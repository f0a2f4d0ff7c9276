"""`build_model`: a model from a ``_target_`` config or a callable, given the data's
``input_shape`` and ``num_classes`` when the target accepts them."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

_DATA_ARGUMENTS = ("input_shape", "num_classes")


def _named_parameters(target: Callable) -> set[str]:
    """Explicitly named keyword-capable parameters of ``target`` (``**kwargs`` excluded)."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name for name, p in signature.parameters.items() if p.kind in kinds}


def build_model(
    config_or_callable: Mapping | Callable[..., nn.Module] | nn.Module,
    input_shape: Sequence[int],
    num_classes: int,
) -> nn.Module:
    """Instantiate a model.

    ``config_or_callable`` is a ``{_target_: ..., **kwargs}`` mapping (dict or DictConfig,
    instantiated with ``hydra.utils.instantiate``), a class/function/partial, or an
    ``nn.Module`` (returned as is). ``input_shape`` and ``num_classes`` are passed only
    when the target names them as parameters and the config does not set them, so any
    ``nn.Module`` plugs in by ``_target_`` alone.
    """
    if isinstance(config_or_callable, nn.Module):
        return config_or_callable
    data_arguments = {
        "input_shape": tuple(int(d) for d in input_shape),
        "num_classes": int(num_classes),
    }
    if isinstance(config_or_callable, Mapping):
        from hydra.utils import get_object, instantiate

        if "_target_" not in config_or_callable:
            raise ValueError(f"model config {dict(config_or_callable)} has no _target_")
        target = get_object(str(config_or_callable["_target_"]))
        factory = instantiate(config_or_callable, _partial_=True, _convert_="all")
        already_set = set(config_or_callable)
    elif callable(config_or_callable):
        target = factory = config_or_callable
        already_set = set(getattr(config_or_callable, "keywords", None) or {})
    else:
        raise TypeError(
            f"model={config_or_callable!r}; expected a _target_ config, a callable or an nn.Module"
        )
    accepted = _named_parameters(target)
    extra: dict[str, Any] = {
        name: value
        for name, value in data_arguments.items()
        if name in accepted and name not in already_set
    }
    model = factory(**extra)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model target {target!r} returned {type(model).__name__}, not nn.Module")
    return model
