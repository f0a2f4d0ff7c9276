"""A synthetic click-log stream with drift across days, for CTR retraining experiments.

Generative model (day ``t = 1, 2, ...``; ``d`` = ``latent_dim``; ``rho(s) = sqrt(1 - s^2)``):

* user tastes ``u_i(1) ~ N(0, I_d)``, ``u_i(t) = rho(s_u) u_i(t-1) + s_u e``, ``e ~ N(0, I_d)``
  (a random walk that keeps unit variance, ``s_u`` = ``user_drift``); item factors
  ``v_j(t)`` drift the same way with ``s_v`` = ``item_drift``;
* item popularity ``p_j(1) ~ N(0, 1)``, ``p_j(t) = rho(s_p) p_j(t-1) + s_p e``
  (``s_p`` = ``popularity_drift``): items are shown with probability ``softmax(p(t))_j``
  and popular items are clicked more;
* fixed effects: user bias ``a_i ~ N(0, 0.5^2)``, category effect ``g_c ~ N(0, 0.5^2)``
  for the item's category ``c(j) = j mod num_categories``, context effect
  ``k_m ~ N(0, context_scale^2)`` for the context (e.g. hour/device) ``m``, drawn uniformly;
* a request is a user drawn uniformly, an item drawn by exposure, a context; the click is
  ``Bernoulli(sigmoid(z))`` with
  ``z = bias + a_i + g_c(j) + k_m + popularity_scale p_j(t) + interaction_scale <u_i(t), v_j(t)> / sqrt(d)``.

Everything is seeded: day ``t`` is the same whatever order days are asked for. Sample ids
are global and stable: day ``t`` holds ids ``(t-1) * samples_per_day + [0, samples_per_day)``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from softlabel.loop.ctr_log import CTRColumnSpec, CTRFeatureEncoder
from softlabel.loop.stream import Chunk, Stream

__all__ = ["CATEGORICAL_FIELDS", "ClickLogGenerator", "clicklog_stream"]

CATEGORICAL_FIELDS = ("user_id", "item_id", "category_id", "context_id")


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _unit_interval(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


class ClickLogGenerator:
    """Seeded click-log days with drifting users, items and popularity (see the module doc)."""

    def __init__(
        self,
        *,
        num_users: int = 500,
        num_items: int = 300,
        num_categories: int = 20,
        num_contexts: int = 8,
        latent_dim: int = 8,
        samples_per_day: int = 4000,
        user_drift: float = 0.2,
        item_drift: float = 0.2,
        popularity_drift: float = 0.3,
        bias: float = -1.5,
        popularity_scale: float = 0.5,
        interaction_scale: float = 1.5,
        context_scale: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.num_users = _positive_int("num_users", num_users)
        self.num_items = _positive_int("num_items", num_items)
        self.num_categories = _positive_int("num_categories", num_categories)
        self.num_contexts = _positive_int("num_contexts", num_contexts)
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.samples_per_day = _positive_int("samples_per_day", samples_per_day)
        self.user_drift = _unit_interval("user_drift", user_drift)
        self.item_drift = _unit_interval("item_drift", item_drift)
        self.popularity_drift = _unit_interval("popularity_drift", popularity_drift)
        self.bias, self.popularity_scale = float(bias), float(popularity_scale)
        self.interaction_scale, self.context_scale = float(interaction_scale), float(context_scale)
        self.seed = int(seed)
        rng = np.random.default_rng([self.seed, 0])
        self.user_bias = rng.normal(0.0, 0.5, self.num_users)
        self.category_effect = rng.normal(0.0, 0.5, self.num_categories)
        self.context_effect = rng.normal(0.0, self.context_scale, self.num_contexts)
        self.item_category = np.arange(self.num_items) % self.num_categories
        first = (
            rng.normal(size=(self.num_users, self.latent_dim)),
            rng.normal(size=(self.num_items, self.latent_dim)),
            rng.normal(size=self.num_items),
        )
        self._states: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [first]

    def state(self, day: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(user factors, item factors, item popularity)`` on ``day`` (1-based)."""
        _positive_int("day", day)
        while len(self._states) < day:
            t = len(self._states) + 1
            rng = np.random.default_rng([self.seed, t, 0])
            users, items, popularity = self._states[-1]
            step = []
            for value, drift in (
                (users, self.user_drift),
                (items, self.item_drift),
                (popularity, self.popularity_drift),
            ):
                step.append(
                    math.sqrt(1.0 - drift**2) * value + drift * rng.normal(size=value.shape)
                )
            self._states.append((step[0], step[1], step[2]))
        return self._states[day - 1]

    def click_probability(
        self, day: int, user: np.ndarray, item: np.ndarray, context: np.ndarray
    ) -> np.ndarray:
        """``sigmoid(z)`` of the generative model for the given requests on ``day``."""
        users, items, popularity = self.state(day)
        affinity = np.einsum("nd,nd->n", users[user], items[item]) / math.sqrt(self.latent_dim)
        logit = (
            self.bias
            + self.user_bias[user]
            + self.category_effect[self.item_category[item]]
            + self.context_effect[context]
            + self.popularity_scale * popularity[item]
            + self.interaction_scale * affinity
        )
        return 1.0 / (1.0 + np.exp(-logit))

    def requests(self, day: int, n: int, first_id: int, stream: int = 1) -> pd.DataFrame:
        """``n`` requests of ``day`` with ids ``first_id + [0, n)``; ``stream`` picks the RNG stream."""
        _, _, popularity = self.state(day)
        rng = np.random.default_rng([self.seed, day, stream])
        exposure = np.exp(popularity - popularity.max())
        user = rng.integers(0, self.num_users, n)
        item = rng.choice(self.num_items, size=n, p=exposure / exposure.sum())
        context = rng.integers(0, self.num_contexts, n)
        prob = self.click_probability(day, user, item, context)
        return pd.DataFrame(
            {
                "sample_id": np.arange(first_id, first_id + n, dtype=np.int64),
                "day": np.full(n, day, dtype=np.int64),
                "user_id": user,
                "item_id": item,
                "category_id": self.item_category[item],
                "context_id": context,
                "click": (rng.random(n) < prob).astype(np.int64),
                "p_click": prob,
            }
        )

    def day(self, day: int) -> pd.DataFrame:
        """The click log of ``day`` (1-based): ``samples_per_day`` rows with stable global ids."""
        _positive_int("day", day)
        return self.requests(day, self.samples_per_day, (day - 1) * self.samples_per_day)


def clicklog_stream(
    *,
    num_days: int = 7,
    holdout_per_day: int = 200,
    buckets_per_field: int = 1024,
    seed: int = 0,
    **generator_kwargs: object,
) -> Stream:
    """A :class:`Stream` of ``num_days`` synthetic click-log days, features hashed.

    The held-out set pools ``holdout_per_day`` extra requests from every day (ids after
    all days' ids), so it spans the whole period.
    """
    num_days = _positive_int("num_days", num_days)
    generator = ClickLogGenerator(seed=seed, **generator_kwargs)  # type: ignore[arg-type]
    spec = CTRColumnSpec(
        label="click", categorical=CATEGORICAL_FIELDS, buckets_per_field=buckets_per_field
    )
    days = [generator.day(t) for t in range(1, num_days + 1)]
    first_holdout_id = num_days * generator.samples_per_day
    holdout = pd.concat(
        [
            generator.requests(
                t, holdout_per_day, first_holdout_id + (t - 1) * holdout_per_day, stream=2
            )
            for t in range(1, num_days + 1)
        ],
        ignore_index=True,
    )
    encoder = CTRFeatureEncoder(spec).fit(days[0])

    def chunk(name: str, frame: pd.DataFrame) -> Chunk:
        return Chunk(
            name=name,
            x=encoder.transform(frame),
            y=frame["click"].to_numpy(dtype=np.float32),
            ids=frame["sample_id"].to_numpy(),
        )

    return Stream(
        name="clicklog",
        task="binary",
        num_classes=1,
        chunks=[chunk(f"day {t}", frame) for t, frame in enumerate(days, start=1)],
        holdout=chunk("holdout", holdout),
        model_kwargs={"num_categorical": len(CATEGORICAL_FIELDS), "num_buckets": spec.num_buckets},
        description=f"synthetic click log, {num_days} days x {generator.samples_per_day} requests",
    )
