"""CTR models on packed hashed features ``x = [bucket ids | numeric]`` (see ``softlabel.loop.ctr_log``).

The first ``num_categorical`` columns of ``x`` hold global bucket ids in ``[0, num_buckets)``
(stored as floats), the remaining columns numeric features. Both models return one logit
per example, shape ``(N,)`` (or ``(N, K)`` if ``num_classes = K > 1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["EmbeddingMLP", "HashedLogisticRegression"]


def _layout(
    input_shape: Sequence[int], num_classes: int, num_categorical: int, num_buckets: int
) -> int:
    """Validate the packed layout; return the number of numeric columns."""
    shape = tuple(input_shape)
    if len(shape) != 1 or shape[0] < 1:
        raise ValueError(
            f"input_shape must be (F,) with F >= 1 packed feature columns, got {shape}"
        )
    if not 0 <= num_categorical <= shape[0]:
        raise ValueError(
            f"num_categorical must be in [0, {shape[0]}] for input_shape {shape}, got {num_categorical}"
        )
    if num_categorical and num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (1 = one binary logit), got {num_classes}")
    return shape[0] - num_categorical


def _split(x: Tensor, num_categorical: int, num_buckets: int) -> tuple[Tensor, Tensor]:
    if x.ndim != 2:
        raise ValueError(f"expected packed features of shape (N, F), got {tuple(x.shape)}")
    buckets = x[:, :num_categorical].long()
    if buckets.numel() and (int(buckets.min()) < 0 or int(buckets.max()) >= num_buckets):
        raise ValueError(
            f"bucket ids must lie in [0, {num_buckets}), got [{int(buckets.min())}, {int(buckets.max())}]"
        )
    return buckets, x[:, num_categorical:].float()


def _squeeze(logits: Tensor, num_classes: int) -> Tensor:
    return logits.squeeze(-1) if num_classes == 1 else logits


class HashedLogisticRegression(nn.Module):
    """``z = b + sum_f w[bucket_f] + <w_num, x_num>``: logistic regression on hashed one-hot features."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int = 1,
        *,
        num_categorical: int,
        num_buckets: int,
    ) -> None:
        super().__init__()
        num_numeric = _layout(input_shape, num_classes, num_categorical, num_buckets)
        self.num_categorical, self.num_buckets, self.num_classes = (
            num_categorical,
            num_buckets,
            num_classes,
        )
        self.weights = nn.Embedding(max(num_buckets, 1), num_classes)
        nn.init.zeros_(self.weights.weight)
        self.numeric = nn.Linear(num_numeric, num_classes) if num_numeric else None
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: Tensor) -> Tensor:
        buckets, numeric = _split(x, self.num_categorical, self.num_buckets)
        logits = self.bias + self.weights(buckets).sum(dim=1)
        if self.numeric is not None:
            logits = logits + self.numeric(numeric)
        return _squeeze(logits, self.num_classes)


class EmbeddingMLP(nn.Module):
    """Embeddings of the hashed fields and the numeric features through an MLP, plus a linear part.

    ``z = linear(x) + MLP([e_1, ..., e_F, x_num])``; with ``fm=True`` (DeepFM) also the
    factorisation-machine term ``0.5 * sum_k ((sum_f e_fk)^2 - sum_f e_fk^2)``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int = 1,
        *,
        num_categorical: int,
        num_buckets: int,
        embedding_dim: int = 8,
        hidden: Sequence[int] = (64, 32),
        dropout: float = 0.0,
        fm: bool = False,
    ) -> None:
        super().__init__()
        num_numeric = _layout(input_shape, num_classes, num_categorical, num_buckets)
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_categorical, self.num_buckets, self.num_classes = (
            num_categorical,
            num_buckets,
            num_classes,
        )
        self.fm = bool(fm)
        self.linear = HashedLogisticRegression(
            input_shape, num_classes, num_categorical=num_categorical, num_buckets=num_buckets
        )
        self.embedding = nn.Embedding(max(num_buckets, 1), embedding_dim)
        nn.init.normal_(self.embedding.weight, std=0.01)
        layers: list[nn.Module] = []
        width = num_categorical * embedding_dim + num_numeric
        for size in hidden:
            layers += [nn.Linear(width, int(size)), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = int(size)
        layers.append(nn.Linear(width, num_classes))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        buckets, numeric = _split(x, self.num_categorical, self.num_buckets)
        embedded = self.embedding(buckets)  # (N, F, E)
        deep = self.mlp(torch.cat([embedded.flatten(1), numeric], dim=1))
        logits = _squeeze(deep, self.num_classes) + self.linear(x)
        if self.fm:
            pairwise = 0.5 * (embedded.sum(1).pow(2) - embedded.pow(2).sum(1)).sum(1)
            logits = logits + (pairwise if self.num_classes == 1 else pairwise.unsqueeze(-1))
        return logits
