"""The rule every manifest reader applies to the files its manifest lists."""

from __future__ import annotations

import pytest

from softlabel._manifest import ManifestFilesError, check_listed_files, listed_file_paths


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "is not a non-empty string"),
        ("../x.npy", "'..'"),
        ("a/../../x.npy", "'..'"),
        ("./x.npy", "'.'"),
        ("a//x.npy", "empty component"),
        ("a/", "empty component"),
        ("/abs/x.npy", "absolute path"),
        ("a\\x.npy", "backslash"),
    ],
)
def test_names_must_be_normalised_relative_paths(name, problem):
    with pytest.raises(ManifestFilesError, match=rf"manifest 'm.json': files entry .*{problem}"):
        check_listed_files({name: {}}, [name], manifest="'m.json'")


def test_listed_names_must_be_exactly_the_files_read(tmp_path):
    (tmp_path / "sub").mkdir()
    files = {"a.npy": {}, "sub/b.npy": {}}
    paths = listed_file_paths(tmp_path, files, ["sub/b.npy", "a.npy"], manifest="'m'")
    root = tmp_path.resolve()
    assert paths == {"sub/b.npy": root / "sub" / "b.npy", "a.npy": root / "a.npy"}
    with pytest.raises(ManifestFilesError, match=r"not listed \(would be read unchecked\) \['a'\]"):
        check_listed_files({}, ["a"], manifest="'m'")
    with pytest.raises(ManifestFilesError, match="'files' must map each data file"):
        check_listed_files(["a"], ["a"], manifest="'m'")


def test_symlinked_directory_leading_out_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ManifestFilesError, match=r"'sub/a.npy' resolves to .*outside"):
        listed_file_paths(root, {"sub/a.npy": {}}, ["sub/a.npy"], manifest="'m'")
