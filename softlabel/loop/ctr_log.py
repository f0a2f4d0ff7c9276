"""Real CTR logs (Criteo/Avazu-style CSV or Parquet) as a stream of daily chunks.

Features are packed into one float32 matrix per chunk, ``x = [buckets | numeric]``:

* the first ``F_cat`` columns hold, for each categorical field ``f``, the global bucket
  ``f * buckets_per_field + (h(f, value) mod buckets_per_field)``, where ``h`` is the first
  8 bytes of BLAKE2b of ``"<field>\\x1f<value>"`` (stable across processes and machines,
  unlike Python's salted ``hash()``); missing values hash the token ``<missing>``, and
  integral floats hash like integers (``5.0`` -> ``"5"``) so a column read as float matches;
* the last ``F_num`` columns hold numeric fields, optionally ``sign(v) log(1 + |v|)``, then
  standardised ``(v - mean) / std`` with the mean/std of the first (training) chunk; missing
  values become 0 (the training mean).

Bucket ids are exact in float32 because the total number of buckets is limited to 2**24.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from softlabel.loop.store import check_logged_probabilities
from softlabel.loop.stream import Chunk, Stream
from softlabel.loop.tables import read_table

__all__ = ["CTRColumnSpec", "CTRFeatureEncoder", "ctr_log_stream", "read_table", "stable_bucket"]

MAX_TOTAL_BUCKETS = 2**24
MISSING_TOKEN = "<missing>"
NUMERIC_TRANSFORMS = ("none", "log1p")


def _token(value: object) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return MISSING_TOKEN
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (np.integer, np.bool_)):
        return str(value.item())
    return str(value)


def stable_bucket(field_name: str, value: object, buckets: int) -> int:
    """The bucket of ``value`` in ``field_name``: BLAKE2b-64 of ``field\\x1fvalue`` mod ``buckets``."""
    key = f"{field_name}\x1f{_token(value)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % buckets


@dataclass(frozen=True)
class CTRColumnSpec:
    """Which columns of a CTR log mean what.

    ``label``: the 0/1 click column. ``categorical``/``numeric``: feature columns.
    ``day_column``: chunk by its sorted distinct values; or ``timestamp_column`` (datetime,
    or numbers in unix seconds) floored to ``chunk_freq`` (a pandas frequency, e.g. "1D").
    ``id_column``: integer sample ids; if ``None`` the row number in the file is the id.
    ``prediction_column``: the serving model's logged P(click) per row (e.g. ``pctr``),
    kept as each chunk's ``logged_probs``; ``None``: the log has none.
    """

    label: str
    categorical: Sequence[str]
    numeric: Sequence[str] = field(default_factory=tuple)
    day_column: str | None = "day"
    timestamp_column: str | None = None
    chunk_freq: str = "1D"
    id_column: str | None = None
    buckets_per_field: int = 2**16
    numeric_transform: str = "log1p"
    prediction_column: str | None = None

    def __post_init__(self) -> None:
        if not self.categorical and not self.numeric:
            raise ValueError("a CTR column spec needs at least one categorical or numeric column")
        if (self.day_column is None) == (self.timestamp_column is None):
            raise ValueError(
                "give exactly one of day_column and timestamp_column, got "
                f"day_column={self.day_column!r}, timestamp_column={self.timestamp_column!r}"
            )
        if not isinstance(self.buckets_per_field, int) or self.buckets_per_field < 1:
            raise ValueError(
                f"buckets_per_field must be an int >= 1, got {self.buckets_per_field!r}"
            )
        total = self.buckets_per_field * len(self.categorical)
        if total > MAX_TOTAL_BUCKETS:
            raise ValueError(
                f"buckets_per_field * len(categorical) = {total} exceeds {MAX_TOTAL_BUCKETS} "
                "(bucket ids are stored exactly in float32)"
            )
        if self.numeric_transform not in NUMERIC_TRANSFORMS:
            raise ValueError(
                f"numeric_transform must be one of {NUMERIC_TRANSFORMS}, got {self.numeric_transform!r}"
            )

    @property
    def num_buckets(self) -> int:
        return self.buckets_per_field * len(self.categorical)

    def required_columns(self) -> list[str]:
        optional = (self.day_column, self.timestamp_column, self.id_column, self.prediction_column)
        extra = [c for c in optional if c is not None]
        return [self.label, *self.categorical, *self.numeric, *extra]


class CTRFeatureEncoder:
    """Hashes categorical fields and standardises numeric fields (stats from ``fit``)."""

    def __init__(self, spec: CTRColumnSpec) -> None:
        self.spec = spec
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def _numeric(self, frame: pd.DataFrame) -> np.ndarray:
        values = frame[list(self.spec.numeric)].to_numpy(dtype=np.float64, na_value=np.nan)
        if self.spec.numeric_transform == "log1p":
            values = np.sign(values) * np.log1p(np.abs(values))
        return values

    def fit(self, frame: pd.DataFrame) -> CTRFeatureEncoder:
        """Learn the numeric mean/std from ``frame`` (the first training chunk)."""
        values = self._numeric(frame)
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(values, axis=0) if len(values) else np.zeros(values.shape[1])
            std = np.nanstd(values, axis=0) if len(values) else np.ones(values.shape[1])
        self.mean = np.nan_to_num(mean, nan=0.0)
        self.std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """The packed float32 matrix ``[buckets | standardised numeric]`` of ``frame``."""
        if self.mean is None or self.std is None:
            raise ValueError("CTRFeatureEncoder.transform called before fit")
        spec = self.spec
        out = np.zeros((len(frame), len(spec.categorical) + len(spec.numeric)), dtype=np.float32)
        for j, name in enumerate(spec.categorical):
            codes, uniques = pd.factorize(frame[name], use_na_sentinel=True)
            table = np.array(
                [stable_bucket(name, v, spec.buckets_per_field) for v in uniques], dtype=np.int64
            )
            missing = stable_bucket(name, None, spec.buckets_per_field)
            buckets = np.where(
                codes >= 0, table[np.maximum(codes, 0)] if len(table) else missing, missing
            )
            out[:, j] = j * spec.buckets_per_field + buckets
        if spec.numeric:
            scaled = (self._numeric(frame) - self.mean) / self.std
            out[:, len(spec.categorical) :] = np.nan_to_num(scaled, nan=0.0)
        return out


def _chunk_keys(frame: pd.DataFrame, spec: CTRColumnSpec) -> pd.Series:
    if spec.day_column is not None:
        return frame[spec.day_column]
    raw = frame[spec.timestamp_column]
    stamps = (
        pd.to_datetime(raw, unit="s") if pd.api.types.is_numeric_dtype(raw) else pd.to_datetime(raw)
    )
    return stamps.dt.floor(spec.chunk_freq)


def _in_holdout(ids: np.ndarray, fraction: float) -> np.ndarray:
    """Stable per-id draw: the id's BLAKE2b hash, as a number in [0, 1), is below ``fraction``."""
    draws = [
        int.from_bytes(hashlib.blake2b(str(int(i)).encode(), digest_size=8).digest(), "little")
        / 2**64
        for i in ids
    ]
    return np.asarray(draws) < fraction


def ctr_log_stream(
    path: str | os.PathLike[str],
    spec: CTRColumnSpec | None = None,
    *,
    holdout_fraction: float = 0.1,
    file_format: str | None = None,
    **spec_kwargs: object,
) -> Stream:
    """A :class:`Stream` from a CTR log: one chunk per day, a hashed held-out sample.

    Rows whose id hashes below ``holdout_fraction`` (from every day) form the fixed
    held-out set; the others are chunked by day in ascending order. The encoder's numeric
    statistics come from the first chunk. ``spec`` or its fields as keyword arguments.
    With ``spec.prediction_column`` set, the column is checked (numeric, no missing
    value, in [0, 1]) and each chunk carries its rows' values as ``logged_probs``.
    """
    if spec is None:
        spec = CTRColumnSpec(**spec_kwargs)  # type: ignore[arg-type]
    elif spec_kwargs:
        raise ValueError(f"give either spec or its fields, not both (got {sorted(spec_kwargs)})")
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction!r}")
    frame = read_table(path, file_format=file_format)
    missing = [c for c in spec.required_columns() if c not in frame.columns]
    if missing:
        raise ValueError(
            f"columns {missing} not in {os.fspath(path)!r}; columns are {list(frame.columns)}"
        )
    labels = frame[spec.label]
    if labels.isna().any() or not labels.isin([0, 1]).all():
        raise ValueError(f"label column {spec.label!r} must hold only 0/1 clicks")
    if spec.id_column is None:
        ids = np.arange(len(frame), dtype=np.int64)
    else:
        ids = frame[spec.id_column].to_numpy()
        if not np.issubdtype(ids.dtype, np.integer) or len(np.unique(ids)) != len(ids):
            raise ValueError(f"id_column {spec.id_column!r} must hold unique integer ids")
        ids = ids.astype(np.int64)
    logged = None
    if spec.prediction_column is not None:
        logged = check_logged_probabilities(
            frame[spec.prediction_column], spec.prediction_column, path
        )
    keys = _chunk_keys(frame, spec)
    holdout = _in_holdout(ids, holdout_fraction)
    days = sorted(keys[~holdout].unique())
    if len(days) < 2:
        raise ValueError(
            f"{os.fspath(path)!r} has {len(days)} distinct day(s); the loop needs at least 2"
        )
    rows = [np.flatnonzero((keys == day).to_numpy() & ~holdout) for day in days]
    encoder = CTRFeatureEncoder(spec).fit(frame.iloc[rows[0]])
    y = labels.to_numpy(dtype=np.float32)

    def chunk(name: str, index: np.ndarray) -> Chunk:
        return Chunk(
            name=name,
            x=encoder.transform(frame.iloc[index]),
            y=y[index],
            ids=ids[index],
            logged_probs=None if logged is None else logged[index],
        )

    chunks = [chunk(f"day {day}", index) for day, index in zip(days, rows)]
    model_kwargs = {"num_categorical": len(spec.categorical), "num_buckets": spec.num_buckets}
    return Stream(
        name=f"ctr_log:{os.path.basename(os.fspath(path))}",
        task="binary",
        num_classes=1,
        chunks=chunks,
        holdout=chunk("holdout", np.flatnonzero(holdout)),
        model_kwargs=model_kwargs,
        description=f"CTR log {os.fspath(path)!r}, {len(chunks)} days",
        logged_column=spec.prediction_column,
    )
