"""The prediction store: round trip, append-only, atomic writes, stale-manifest refusal, log import."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

import softlabel.loop.store as store_module
from softlabel.loop.store import PredictionStore, StaleStoreError, ids_fingerprint

SHA, DATA = "a" * 64, "sha256:data1"


def _write(store, version, ids=(5, 2, 9), probs=(0.1, 0.7, 0.4)):
    return store.write(
        version,
        np.array(ids),
        np.array(probs),
        task="binary",
        checkpoint_sha256=SHA,
        data_fingerprint=DATA,
    )


def test_round_trip_sorted_by_id_and_lookup(tmp_path):
    store = PredictionStore(tmp_path / "store")
    manifest = _write(store, 1)
    assert manifest.num_samples == 3 and manifest.version == 1
    stored = store.read(1, checkpoint_sha256=SHA, data_fingerprint=DATA, task="binary")
    assert stored.ids.tolist() == [2, 5, 9]
    np.testing.assert_allclose(stored.lookup(torch.tensor([9, 5, 2])), [0.4, 0.1, 0.7], rtol=1e-6)
    with pytest.raises(KeyError, match="no prediction for 1 sample"):
        stored.lookup(np.array([2, 3]))


def test_multiclass_rows_and_validation(tmp_path):
    store = PredictionStore(tmp_path)
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    store.write(
        1,
        np.array([10, 11]),
        probs,
        task="multiclass",
        checkpoint_sha256=SHA,
        data_fingerprint=DATA,
    )
    np.testing.assert_allclose(store.read(1).lookup([11, 10]), probs[::-1], rtol=1e-6)
    with pytest.raises(ValueError, match="sum to 1"):
        store.write(
            2,
            np.array([1, 2]),
            np.array([[0.5, 0.6], [0.5, 0.5]]),
            task="multiclass",
            checkpoint_sha256=SHA,
            data_fingerprint=DATA,
        )
    with pytest.raises(ValueError, match="probabilities in"):
        _write(store, 3, probs=(0.1, 1.5, 0.2))
    with pytest.raises(ValueError, match="unique"):
        _write(store, 4, ids=(1, 1, 2))


def test_append_only(tmp_path):
    store = PredictionStore(tmp_path)
    _write(store, 1)
    with pytest.raises(ValueError, match="append-only"):
        _write(store, 1, probs=(0.2, 0.2, 0.2))
    assert store.read(1).lookup([5])[0] == pytest.approx(0.1)


def test_crash_before_manifest_keeps_previous_state(tmp_path, monkeypatch):
    store = PredictionStore(tmp_path)
    _write(store, 1)

    def crash(directory, manifest):
        raise OSError("simulated crash after the data files, before the manifest")

    monkeypatch.setattr(store_module, "_write_manifest", crash)
    with pytest.raises(OSError, match="simulated crash"):
        _write(store, 2, probs=(0.9, 0.9, 0.9))
    monkeypatch.undo()
    assert store.versions() == [1]
    assert len(store.partial_writes()) == 1  # the data files were written, then abandoned
    assert (store.partial_writes()[0] / "probs.npy").is_file()
    with pytest.raises(FileNotFoundError, match="unfinished writes"):
        store.read(2)
    np.testing.assert_allclose(store.read(1).lookup([2, 5, 9]), [0.7, 0.1, 0.4], rtol=1e-6)
    # a version directory without a manifest (e.g. copied by hand) is refused too
    (tmp_path / "v0003").mkdir()
    np.save(tmp_path / "v0003" / "probs.npy", np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="incomplete"):
        store.read(3)
    assert store.remove_partial_writes() == 1 and store.partial_writes() == []
    _write(store, 2, probs=(0.9, 0.9, 0.9))  # the version can be written after the crash
    assert store.versions() == [1, 2]


@pytest.mark.parametrize(
    ("expected", "match"),
    [
        ({"data_fingerprint": "sha256:other"}, "data_fingerprint"),
        ({"checkpoint_sha256": "b" * 64}, "checkpoint_sha256"),
        ({"task": "multiclass"}, "task"),
    ],
)
def test_stale_store_refused(tmp_path, expected, match):
    store = PredictionStore(tmp_path)
    _write(store, 1)
    with pytest.raises(StaleStoreError, match=f"stale or mismatched: its {match}"):
        store.read(1, **expected)


def test_wrong_version_and_tampered_file_refused(tmp_path):
    store = PredictionStore(tmp_path)
    _write(store, 1)
    with pytest.raises(FileNotFoundError, match=r"complete versions: \[1\]"):
        store.read(2)
    (tmp_path / "v0001").rename(tmp_path / "v0002")  # manifest says 1, directory says 2
    with pytest.raises(StaleStoreError, match="records version 1"):
        store.read(2)
    (tmp_path / "v0002").rename(tmp_path / "v0001")
    np.save(tmp_path / "v0001" / "probs.npy", np.array([0.3, 0.3, 0.3], dtype=np.float32))
    with pytest.raises(StaleStoreError, match="manifest hash"):
        store.read(1)
    manifest = json.loads((tmp_path / "v0001" / "manifest.json").read_text())
    assert (
        manifest["format"] == "softlabel-prediction-store" and manifest["checkpoint_sha256"] == SHA
    )


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_import_log(tmp_path, suffix):
    frame = pd.DataFrame({"request": [30, 10, 20], "score": [0.25, 0.5, 0.75], "other": [1, 2, 3]})
    path = tmp_path / f"log.{suffix}"
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path)
    store = PredictionStore(tmp_path / "store")
    manifest = store.import_log(
        path, "request", "score", 4, checkpoint_sha256="prod-model-2024-05-01"
    )
    assert manifest.source == f"log:{path}" and manifest.task == "binary"
    assert manifest.data_fingerprint == ids_fingerprint(np.array([10, 20, 30]))
    stored = store.read(4, checkpoint_sha256="prod-model-2024-05-01")
    np.testing.assert_allclose(stored.lookup([10, 20, 30]), [0.5, 0.75, 0.25])
    with pytest.raises(ValueError, match="column 'nope' not in"):
        store.import_log(path, "request", "nope", 5, checkpoint_sha256="x")


def test_import_multiclass_log(tmp_path):
    path = tmp_path / "log.csv"
    pd.DataFrame({"id": [1, 2], "p0": [0.1, 0.9], "p1": [0.9, 0.1]}).to_csv(path, index=False)
    store = PredictionStore(tmp_path / "s")
    assert store.import_log(path, "id", ["p0", "p1"], 1, checkpoint_sha256="m").num_classes == 2
    np.testing.assert_allclose(store.read(1).lookup([2]), [[0.9, 0.1]])


def _edit_manifest(store, version, edit):
    path = store.path(version) / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return manifest


def test_empty_files_map_is_refused_and_a_replaced_array_never_served(tmp_path):
    """``files: {}`` used to skip every hash check: a replaced probs.npy was served."""
    store = PredictionStore(tmp_path)
    _write(store, 1)
    _edit_manifest(store, 1, lambda m: m.update(files={}))
    np.save(tmp_path / "v0001" / "probs.npy", np.array([0.9, 0.9, 0.9], dtype=np.float32))
    with pytest.raises(ValueError, match=r"manifest.json'.*not listed.*\['ids.npy', 'probs.npy'\]"):
        store.read(1)


def test_partial_files_map_is_refused(tmp_path):
    store = PredictionStore(tmp_path)
    _write(store, 1)
    _edit_manifest(store, 1, lambda m: m["files"].pop("probs.npy"))
    with pytest.raises(ValueError, match=r"not listed \(would be read unchecked\) \['probs.npy'\]"):
        store.read(1)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../../outside/file.bin", r"has a '\.', '\.\.' or empty component"),
        ("/etc/hostname", "is an absolute path"),
        ("./probs.npy", r"has a '\.', '\.\.' or empty component"),
        ("sub\\probs.npy", "contains a backslash"),
    ],
)
def test_file_names_outside_the_version_are_refused(tmp_path, name, problem):
    """A manifest naming ``../../somewhere/file.bin`` used to read, hash and accept it."""
    store = PredictionStore(tmp_path / "store")
    _write(store, 1)
    outside = tmp_path / "outside" / "file.bin"
    outside.parent.mkdir()
    outside.write_bytes(b"secret")
    digest = store_module._sha256(outside)
    _edit_manifest(
        store, 1, lambda m: m["files"].update({name: {"shape": [], "dtype": "", "sha256": digest}})
    )
    with pytest.raises(ValueError, match=f"files entry {re.escape(repr(name))} {problem}"):
        store.read(1)


def test_symlink_leading_out_of_the_version_is_refused(tmp_path):
    store = PredictionStore(tmp_path / "store")
    _write(store, 1)
    probs = store.path(1) / "probs.npy"
    outside = tmp_path / "elsewhere.npy"
    probs.rename(outside)  # same bytes, so the hash alone would accept it
    probs.symlink_to(outside)
    with pytest.raises(ValueError, match=r"files entry 'probs.npy' resolves to .*outside"):
        store.read(1)
    probs.unlink()
    outside.rename(probs)
    np.testing.assert_allclose(store.read(1).lookup([5]), [0.1], rtol=1e-6)


def test_files_entry_without_a_hash_is_refused(tmp_path):
    store = PredictionStore(tmp_path)
    _write(store, 1)
    _edit_manifest(store, 1, lambda m: m["files"]["ids.npy"].update(sha256=""))
    with pytest.raises(ValueError, match="files entry 'ids.npy' must hold exactly"):
        store.read(1)
    _edit_manifest(store, 1, lambda m: m.update(files={"ids.npy": {}, "probs.npy": {}}, x=1))
    with pytest.raises(ValueError, match="files entry 'ids.npy' must hold exactly"):
        store.manifest(1)
