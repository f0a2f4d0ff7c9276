"""User data is checked when it is read: errors name the file, the column and the first
bad row, and nothing is silently changed."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from softlabel.data import ArraySource, tabular


def _csv(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_fractional_label_is_refused_not_made_a_class(tmp_path):
    path = _csv(tmp_path, "a,b,label\n1,2,0\n3,4,1\n5,6,1.5\n7,8,2\n")
    with pytest.raises(
        ValueError,
        match=r"label column 'label' in .*data\.csv holds the non-integer value 1\.5 at row 2 "
        r"\(line 4 of the file\)",
    ):
        tabular(path, ["a", "b"], "label")


def test_whole_numbers_stored_as_floats_are_the_same_classes(tmp_path):
    path = _csv(tmp_path, "a,label\n1,0\n2,1.0\n3,2\n4,1\n")
    source = tabular(path, ["a"], "label")
    assert source.num_classes == 3 and source.classes == (0, 1, 2)
    np.testing.assert_array_equal(source.y, [0, 1, 2, 1])


@pytest.mark.parametrize(
    ("written", "shown", "kind"),
    [
        ("inf", "inf", "infinite"),
        ("-inf", "-inf", "infinite"),
        ("1e39", "1e+39", r"beyond the float32 range \(3\.4e38\)"),
    ],
)
def test_infinite_or_overflowing_feature_names_file_column_and_row(tmp_path, written, shown, kind):
    path = _csv(tmp_path, f"a,b,label\n1,2,0\n3,{written},1\n5,6,1\n")
    with pytest.raises(
        ValueError,
        match=rf"feature column 'b' in .*data\.csv holds {re.escape(shown)} at row 1 "
        rf"\(line 3 of the file\), which is {kind}",
    ):
        tabular(path, ["a", "b"], "label")


def test_infinite_feature_in_parquet_names_the_row(tmp_path):
    path = tmp_path / "data.parquet"
    pd.DataFrame({"a": [1.0, 2.0, np.inf], "label": [0, 1, 1]}).to_parquet(path)
    with pytest.raises(
        ValueError, match=r"feature column 'a' in .*data\.parquet holds inf at row 2, which is"
    ):
        tabular(path, ["a"], "label")


def test_header_only_file_says_it_has_no_rows(tmp_path):
    path = _csv(tmp_path, "a,b,label\n")
    with pytest.raises(
        ValueError, match=r"data\.csv has no data rows \(only the header \['a', 'b', 'label'\]\)"
    ):
        tabular(path, ["a", "b"], "label")


def test_missing_and_text_values_name_the_row(tmp_path):
    path = _csv(tmp_path, "a,b,label\n1,2,x\n3,,y\n")
    with pytest.raises(ValueError, match=r"\['b'\] .*missing values \(NaN\); first at row 1"):
        tabular(path, ["a", "b"], "label")
    path = _csv(tmp_path, "a,b,label\n1,2,x\n3,4,\n")
    with pytest.raises(ValueError, match=r"\['label'\] .*missing values \(NaN\); first at row 1"):
        tabular(path, ["a", "b"], "label")
    path = _csv(tmp_path, "a,b,label\n1,2,x\n3,four,y\n")
    with pytest.raises(
        ValueError, match=r"\['b'\] .*not numeric: column 'b' holds 'four' at row 1 \(line 3"
    ):
        tabular(path, ["a", "b"], "label")


def test_unreadable_table_names_the_file(tmp_path):
    path = _csv(tmp_path, "", name="empty.csv")
    with pytest.raises(ValueError, match=r"cannot read .*empty\.csv' as a csv table"):
        tabular(path, ["a"], "label")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        tabular(tmp_path, ["a"], "label")


def test_array_source_refuses_non_finite_features_and_fractional_labels():
    X = np.zeros((4, 1, 2, 3), dtype=np.float32)
    X[2, 0, 1, 2] = np.nan
    with pytest.raises(
        ValueError, match=r"pets: X must be finite; sample 2 holds nan at position \(0, 1, 2\)"
    ):
        ArraySource("pets", X, np.zeros(4), num_classes=2, input_shape=(1, 2, 3))
    X = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"pets: y must hold whole-number .*sample 1 has 0\.5"):
        ArraySource("pets", X, np.array([0.0, 0.5, 1.0]), num_classes=2, input_shape=(2,))
    source = ArraySource("pets", X, np.array([0.0, 1.0, 1.0]), num_classes=2, input_shape=(2,))
    np.testing.assert_array_equal(source.y, [0, 1, 1])
