"""The user's own table (CSV or Parquet) as an `ArraySource`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from softlabel.data.source import ArraySource

_TASKS = ("auto", "multiclass", "binary")


def _read_table(path: Path):
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"tabular: path={str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise ValueError(f"tabular: path={str(path)!r}; allowed suffixes: .csv, .tsv, .parquet, .pq")


def tabular(
    path: str | Path, features: Sequence[str], label: str, task: str = "auto"
) -> ArraySource:
    """Rows of ``path`` (CSV or Parquet) with numeric ``features`` and a ``label`` column.

    Labels are mapped to ``0..K-1`` in sorted order of their unique values; the original
    values are kept in ``source.classes``. ``task="auto"`` and ``"multiclass"`` give a
    multiclass task (also for K = 2); ``task="binary"`` needs exactly 2 label values.
    """
    import pandas as pd

    if task not in _TASKS:
        raise ValueError(f"tabular: task={task!r}; allowed: {_TASKS}")
    if isinstance(features, str):
        raise TypeError(f"tabular: features={features!r} must be a list of column names")
    features = list(features)
    if not features:
        raise ValueError("tabular: features is empty; name at least one feature column")
    path = Path(path).expanduser()
    table = _read_table(path)
    missing = [column for column in [*features, label] if column not in table.columns]
    if missing:
        raise ValueError(
            f"tabular: columns {missing} not found in {path}; available: {list(table.columns)}"
        )
    non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise ValueError(f"tabular: feature columns {non_numeric} in {path} are not numeric")
    with_nan = [c for c in [*features, label] if table[c].isna().any()]
    if with_nan:
        raise ValueError(f"tabular: columns {with_nan} in {path} contain missing values (NaN)")
    values, y = np.unique(table[label].to_numpy(), return_inverse=True)
    if len(values) < 2:
        raise ValueError(f"tabular: label column {label!r} has {len(values)} distinct value(s)")
    if task == "binary" and len(values) != 2:
        raise ValueError(
            f"tabular: task='binary' needs 2 label values; column {label!r} has {len(values)}"
        )
    return ArraySource(
        name=path.stem,
        X=table[features].to_numpy(dtype=np.float32),
        y=y.reshape(-1),
        num_classes=len(values),
        input_shape=(len(features),),
        task="binary" if task == "binary" else "multiclass",
        classes=tuple(v.item() if hasattr(v, "item") else v for v in values),
    )
