"""Reading a log table (CSV or Parquet) into a pandas DataFrame: the CTR logs of
``ctr_log`` and the prediction logs that ``PredictionStore.import_log`` imports."""

from __future__ import annotations

import os

import pandas as pd

__all__ = ["read_table"]


def read_table(path: str | os.PathLike[str], file_format: str | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file (format from the suffix unless ``file_format`` is given)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"log file not found: {path!r}")
    if file_format is None:
        lowered = path.lower()
        if lowered.endswith((".parquet", ".pq")):
            file_format = "parquet"
        elif lowered.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
            file_format = "csv"
        else:
            raise ValueError(
                f"cannot tell the format of {path!r}; pass file_format='csv' or 'parquet'"
            )
    if file_format == "parquet":
        return pd.read_parquet(path)
    if file_format == "csv":
        return pd.read_csv(path, sep="\t" if path.lower().endswith(".tsv") else ",")
    raise ValueError(f"file_format must be 'csv' or 'parquet', got {file_format!r}")
