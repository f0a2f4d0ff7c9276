"""ReLoop against the user's own logged predictions (reference_from=log, prediction_column)."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

import softlabel.loop.runner as runner
from softlabel.loop.app import CONF_DIR
from softlabel.loop.ctr_log import ctr_log_stream
from softlabel.loop.job import run_job
from softlabel.loop.store import PredictionStore, StaleStoreError

ROWS_PER_DAY = 40


def _log(days: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = days * ROWS_PER_DAY
    return pd.DataFrame(
        {
            "request": np.arange(1000, 1000 + n),
            "day": np.repeat(np.arange(1, days + 1), ROWS_PER_DAY),
            "site": rng.choice(["a", "b", "c", "d"], n),
            "app": rng.choice(["x", "y"], n),
            "click": rng.integers(0, 2, n),
            "pctr": rng.uniform(0.0, 1.0, n).round(4),
        }
    )


def _write(tmp_path, frame, name="log.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _config(path, *extra):
    overrides = [
        "loop/stream=ctr_log",
        f"loop.stream.path={path}",
        "loop.stream.categorical=[site,app]",
        "loop.stream.id_column=request",
        "loop.stream.buckets_per_field=16",
        "loop.stream.prediction_column=pctr",
        "loop/model=hashed_lr",
        "versions=2",
        "method=reloop",
        "train.epochs=1",
        "train.batch_size=16",
        "train.csv_logs=false",
        "plot=false",
        *extra,
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="loop", overrides=overrides)


def test_reloop_trains_against_logged_predictions(tmp_path, monkeypatch):
    frame = _log()
    path = _write(tmp_path, frame)
    seen: list[tuple[str, object, list[tuple[torch.Tensor, torch.Tensor]]]] = []
    original = runner._fit

    def recording_fit(module, chunk, task, epochs, settings, log_dir, name, seed):
        batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        reference = module.reference

        def recording_reference(x, index):
            out = reference(x, index)
            if out is not None:
                batches.append((index.clone(), out.detach().clone()))
            return out

        monkeypatch.setattr(module, "reference", recording_reference)
        seen.append((name, module.reference_provider, batches))
        return original(module, chunk, task, epochs, settings, log_dir, name, seed)

    monkeypatch.setattr(runner, "_fit", recording_fit)
    run_job(_config(path, "reference_from=log"), tmp_path / "run")

    pctr = frame.set_index("request")["pctr"]
    stream = ctr_log_stream(
        path,
        label="click",
        categorical=["site", "app"],
        id_column="request",
        buckets_per_field=16,
        prediction_column="pctr",
    )
    day2 = stream.chunks[1]
    store = PredictionStore(tmp_path / "run" / "seed0" / "reloop" / "store")
    manifest = store.manifest(1)
    assert manifest.source == "log:pctr"
    assert manifest.data_fingerprint == day2.fingerprint
    # checkpoint hash = SHA-256 of the shapes and bytes of the id-sorted ids and predictions
    order = np.argsort(day2.ids)
    ids = day2.ids[order].astype(np.int64)
    values = pctr.loc[ids].to_numpy(dtype=np.float32)
    digest = hashlib.sha256()
    for array in (ids, values):
        digest.update(str(array.shape).encode() + array.tobytes())
    assert manifest.checkpoint_sha256 == "log-sha256:" + digest.hexdigest()

    (name, provider, batches) = seen[1]
    assert name == "v2"
    np.testing.assert_allclose(provider.stored.lookup(ids), values, rtol=0, atol=1e-6)
    assert sum(len(i) for i, _ in batches) == len(day2)  # one epoch, every sample once
    for index, reference in batches:  # what the loss received, batch by batch
        expected = pctr.loc[index.numpy()].to_numpy(dtype=np.float32)
        np.testing.assert_allclose(reference.numpy(), expected, rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "run" / "loop.json").read_text())["reference_from"] == "log"
    versions = pd.read_csv(tmp_path / "run" / "versions.csv")
    assert versions.loc[versions["version"] == 2, "reference"].tolist() == ["log:pctr"]

    # an edited log no longer matches the stored version
    with pytest.raises(StaleStoreError, match="checkpoint_sha256"):
        store.read(1, checkpoint_sha256="log-sha256:" + "0" * 64)


def test_default_reference_is_the_previous_model(tmp_path):
    path = _write(tmp_path, _log())
    run_job(_config(path), tmp_path / "run")
    manifest = PredictionStore(tmp_path / "run" / "seed0" / "reloop" / "store").manifest(1)
    assert manifest.source == "model v1" and not manifest.checkpoint_sha256.startswith("log")


def test_log_reference_needs_a_prediction_column(tmp_path):
    path = _write(tmp_path, _log())
    cfg = _config(path, "reference_from=log", "loop.stream.prediction_column=null")
    with pytest.raises(ValueError, match="reference_from='log' needs a stream with logged"):
        run_job(cfg, tmp_path / "run")
    with pytest.raises(ValueError, match="reference_from must be one of"):
        run_job(_config(path, "reference_from=cache"), tmp_path / "run2")


@pytest.mark.parametrize(
    "pctr, message",
    [
        (None, r"columns \['pctr'\] not in '.*bad\.csv'"),
        (["high"] * 120, r"prediction column 'pctr' in '.*bad\.csv' must hold numbers"),
        ([0.5] * 119 + [1.5], r"'pctr' in '.*bad\.csv' must hold probabilities in \[0, 1\]"),
        ([0.5] * 119 + [-0.1], r"'pctr' in '.*bad\.csv' must hold probabilities in \[0, 1\]"),
        ([0.5] * 119 + [np.nan], r"'pctr' in '.*bad\.csv' has 1 missing \(NaN\) value"),
    ],
)
def test_bad_prediction_column_is_refused(tmp_path, pctr, message):
    frame = _log()
    if pctr is None:
        frame = frame.drop(columns="pctr")
    else:
        frame["pctr"] = pctr
    path = _write(tmp_path, frame, "bad.csv")
    with pytest.raises(ValueError, match=message):
        ctr_log_stream(
            path, label="click", categorical=["site"], id_column="request", prediction_column="pctr"
        )
    if pctr is not None:  # the store's import path applies the same checks
        with pytest.raises(ValueError, match=message):
            PredictionStore(tmp_path / "store").import_log(path, "request", "pctr", 1)


def test_import_log_without_model_hash_records_the_log_fingerprint(tmp_path):
    frame = _log().iloc[:5]
    path = _write(tmp_path, frame)
    store = PredictionStore(tmp_path / "store")
    manifest = store.import_log(path, "request", "pctr", 1)
    assert manifest.checkpoint_sha256.startswith("log-sha256:")
    shuffled = frame.iloc[::-1]
    other = PredictionStore(tmp_path / "other").import_log(
        _write(tmp_path, shuffled, "shuffled.csv"), "request", "pctr", 1
    )
    assert other.checkpoint_sha256 == manifest.checkpoint_sha256  # row order does not matter
    edited = frame.assign(pctr=frame["pctr"].where(frame.index != 2, 0.123))
    changed = PredictionStore(tmp_path / "edited").import_log(
        _write(tmp_path, edited, "edited.csv"), "request", "pctr", 1
    )
    assert changed.checkpoint_sha256 != manifest.checkpoint_sha256
