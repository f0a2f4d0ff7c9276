"""The ReLoop reference read from the prediction store, not recomputed by the model."""

from __future__ import annotations

from softlabel.loop.store import PredictionStore, StoredVersion
from softlabel.modules.references import StoredPredictions as _IndexedStoredPredictions

__all__ = ["StoredPredictions"]


class StoredPredictions(_IndexedStoredPredictions):
    """``forward(x, index)``: version ``version``'s stored probabilities of samples ``index``.

    The version is opened with :meth:`PredictionStore.read`, so a store whose manifest does
    not match the given checkpoint hash / data fingerprint / task is refused up front, and a
    sample id with no stored prediction raises KeyError at lookup.
    """

    def __init__(
        self,
        store: PredictionStore,
        version: int,
        *,
        checkpoint_sha256: str | None = None,
        data_fingerprint: str | None = None,
        task: str | None = None,
    ) -> None:
        stored = store.read(
            version,
            checkpoint_sha256=checkpoint_sha256,
            data_fingerprint=data_fingerprint,
            task=task,
        )
        super().__init__(stored)
        self.version = int(version)

    @property
    def stored(self) -> StoredVersion:
        return self.table
