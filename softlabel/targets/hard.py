"""Hard labels: plain cross-entropy."""

from __future__ import annotations

from softlabel.targets._base import TargetSource


class Hard(TargetSource):
    """One-hot targets: ``loss = CE(y, p)`` (mode ``hard``)."""

    name = "hard"
    reference = None
    mode = "hard"

    def __init__(self) -> None:
        super().__init__()
