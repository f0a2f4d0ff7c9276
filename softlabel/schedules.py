"""Hyper-parameter schedules: a value as a function of training progress in [0, 1].

Every schedule is a frozen dataclass callable as ``schedule(progress) -> float``.
``as_schedule`` turns a number, a schedule or a ``{"kind": ..., ...}`` mapping into one.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

__all__ = ["Schedule", "Constant", "Linear", "Cosine", "Step", "as_schedule", "check_progress"]


def check_progress(progress: float) -> float:
    """Return ``progress`` as a float, or raise ValueError when it is outside [0, 1]."""
    if isinstance(progress, bool) or not isinstance(progress, Real):
        raise TypeError(f"progress must be a number in [0, 1], got {progress!r}")
    value = float(progress)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress!r}")
    return value


def _finite_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


class Schedule:
    """Base class: ``schedule(progress)`` returns the value at ``progress`` in [0, 1]."""

    def __call__(self, progress: float) -> float:
        return self.value_at(check_progress(progress))

    def value_at(self, progress: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Schedule):
    """``value`` at every progress."""

    value: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _finite_number("value", self.value))

    def value_at(self, progress: float) -> float:
        return self.value


@dataclass(frozen=True)
class _Ramp(Schedule):
    """A schedule from ``start`` (progress 0) to ``end`` (progress 1)."""

    start: float
    end: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _finite_number("start", self.start))
        object.__setattr__(self, "end", _finite_number("end", self.end))


@dataclass(frozen=True)
class Linear(_Ramp):
    """``start + (end - start) * progress``."""

    def value_at(self, progress: float) -> float:
        return self.start + (self.end - self.start) * progress


@dataclass(frozen=True)
class Cosine(_Ramp):
    """Cosine annealing: ``end + (start - end) * (1 + cos(pi * progress)) / 2``."""

    def value_at(self, progress: float) -> float:
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Step(_Ramp):
    """Piecewise constant: ``start`` before the first milestone, ``end`` from the last one on.

    With n milestones the values are ``start + (end - start) * i / n`` for i = 0..n; at
    ``progress == milestone`` the value after the milestone is in force.
    """

    milestones: tuple[float, ...] = field(default=(0.5,))

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.milestones, (str, bytes)) or not isinstance(self.milestones, Sequence):
            raise TypeError(
                f"milestones must be a sequence of numbers in [0, 1], got {self.milestones!r}"
            )
        points = tuple(_finite_number("milestones", m) for m in self.milestones)
        increasing = all(a < b for a, b in zip(points, points[1:]))
        if not points or not increasing or not all(0.0 <= m <= 1.0 for m in points):
            raise ValueError(
                "milestones must be a non-empty, strictly increasing sequence of numbers "
                f"in [0, 1], got {self.milestones!r}"
            )
        object.__setattr__(self, "milestones", points)

    def value_at(self, progress: float) -> float:
        passed = bisect.bisect_right(self.milestones, progress)
        return self.start + (self.end - self.start) * passed / len(self.milestones)


_KINDS: dict[str, type[Schedule]] = {
    "constant": Constant,
    "linear": Linear,
    "cosine": Cosine,
    "step": Step,
}


def as_schedule(value: float | Schedule | Mapping[str, Any], name: str = "schedule") -> Schedule:
    """Turn a number, a Schedule or a mapping such as ``{"kind": "linear", "start": 0.2,
    "end": 0.0}`` into a Schedule.

    ``name`` is the hyper-parameter the value is for (``"smoothing"``...): every error
    starts with it, e.g. ``smoothing must be a finite number, got nan``.
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, Real) and not isinstance(value, bool):
        return Constant(_finite_number(name, value))
    if isinstance(value, Mapping):
        options = dict(value)
        kind = options.pop("kind", None)
        if kind not in _KINDS:
            raise ValueError(
                f"{name}: schedule kind must be one of {sorted(_KINDS)}, got {kind!r} "
                f"(in {dict(value)!r})"
            )
        if "milestones" in options:
            milestones = options["milestones"]
            if isinstance(milestones, Sequence) and not isinstance(milestones, (str, bytes)):
                options["milestones"] = tuple(milestones)
        try:
            return _KINDS[kind](**options)
        except TypeError as error:
            raise TypeError(f"{name}: bad arguments for schedule kind {kind!r}: {error}") from error
        except ValueError as error:
            raise ValueError(f"{name}: {kind} schedule: {error}") from error
    raise TypeError(
        f"{name} must be a finite number, a softlabel.schedules.Schedule or a mapping with a "
        f"'kind' key, got {value!r}"
    )
