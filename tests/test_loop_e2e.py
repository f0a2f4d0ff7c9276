"""The loop end to end on a tiny stream, warm starts, and the store-backed ReLoop reference."""

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

import softlabel.loop.runner as runner
from softlabel.loop.app import CONF_DIR
from softlabel.loop.job import run_job
from softlabel.loop.store import PredictionStore, StaleStoreError
from softlabel.modules import load_weights

TINY_CLICKLOG = [
    "versions=3",
    "loop.stream.samples_per_day=256",
    "loop.stream.holdout_per_day=32",
    "loop.stream.num_users=30",
    "loop.stream.num_items=20",
    "loop.stream.buckets_per_field=64",
    "loop.stream.bias=0.0",
    "loop/model=hashed_lr",
    "train.epochs=1",
    "train.batch_size=64",
    "train.csv_logs=false",
    "train.optimizer.lr=0.1",
    "plot=true",
]


def _config(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="loop", overrides=overrides)


def test_loop_end_to_end(tmp_path):
    cfg = _config([*TINY_CLICKLOG, "methods=[reloop,hard,kd]"])
    run_job(cfg, tmp_path)
    frame = pd.read_csv(tmp_path / "versions.csv")
    assert len(frame) == 9 and set(frame["method"]) == {"reloop", "hard", "kd"}
    assert sorted(frame["version"].unique()) == [1, 2, 3]
    for column in ("next/auroc", "next/logloss", "next/ece", "holdout/auroc", "holdout/logloss"):
        assert frame[column].notna().all(), column
    later = frame["version"] >= 2
    assert (
        frame.loc[later, ["next/nfr", "next/err", "holdout/nfr", "holdout/err"]].notna().all().all()
    )
    assert frame.loc[~later, "next/nfr"].isna().all()  # v1 has no previous version
    assert (tmp_path / "summary.md").read_text().startswith("# Self-correction loop")
    assert (tmp_path / "versions.png").stat().st_size > 0

    # independent check: reload v1 and v2 of reloop, recompute the store and the flip rate
    from softlabel.loop.clicklog import clicklog_stream
    from softlabel.models.ctr import HashedLogisticRegression

    stream = clicklog_stream(
        num_days=4,
        samples_per_day=256,
        holdout_per_day=32,
        num_users=30,
        num_items=20,
        buckets_per_field=64,
        bias=0.0,
        seed=0,
    )
    models = {}
    for version, path in (
        (1, "seed0/v1/checkpoints/v1.ckpt"),
        (2, "seed0/reloop/checkpoints/v2.ckpt"),
    ):
        model = HashedLogisticRegression((4,), 1, num_categorical=4, num_buckets=256)
        models[version] = load_weights(model, tmp_path / path).eval()
    store = PredictionStore(tmp_path / "seed0" / "reloop" / "store")
    assert store.versions() == [1, 2]
    day2 = stream.chunks[1]
    with torch.no_grad():
        served = torch.sigmoid(models[1](torch.tensor(day2.x))).numpy()
    stored = store.read(1, data_fingerprint=day2.fingerprint)
    np.testing.assert_allclose(stored.lookup(day2.ids), served, rtol=1e-5, atol=1e-6)
    day3 = stream.chunks[2]
    with torch.no_grad():
        p1, p2 = (torch.sigmoid(models[v](torch.tensor(day3.x))).numpy() for v in (1, 2))
    right1, right2 = (p1 >= 0.5) == (day3.y == 1), (p2 >= 0.5) == (day3.y == 1)
    row = frame[(frame["method"] == "reloop") & (frame["version"] == 2)].iloc[0]
    assert row["next/nfr"] == pytest.approx(np.mean(right1 & ~right2), abs=1e-6)
    errors1, errors2 = (~right1).sum(), (~right2).sum()
    assert row["next/err"] == pytest.approx((errors1 - errors2) / errors1, abs=1e-6)


@pytest.mark.parametrize("warm_start", [True, False])
def test_warm_start_loads_previous_version(tmp_path, monkeypatch, warm_start):
    seen = []
    original = runner._fit

    def recording_fit(module, chunk, task, epochs, settings, log_dir, name, seed):
        seen.append((name, {k: v.clone() for k, v in module.student.state_dict().items()}))
        trainer = original(module, chunk, task, epochs, settings, log_dir, name, seed)
        seen.append(
            (name + "-after", {k: v.clone() for k, v in module.student.state_dict().items()})
        )
        return trainer

    monkeypatch.setattr(runner, "_fit", recording_fit)
    cfg = _config(
        [
            "versions=3",
            "loop/stream=digits",
            "loop/model=mlp",
            "loop.model.hidden=[16]",
            "method=hard",
            f"warm_start={str(warm_start).lower()}",
            "train.epochs=1",
            "train.batch_size=128",
            "train.csv_logs=false",
            "plot=false",
        ]
    )
    run_job(cfg, tmp_path)
    states = dict(seen)
    assert [name for name, _ in seen] == ["v1", "v1-after", "v2", "v2-after", "v3", "v3-after"]
    for version in (2, 3):
        before, previous = states[f"v{version}"], states[f"v{version - 1}-after"]
        same = all(torch.equal(before[k], previous[k]) for k in before)
        assert same == warm_start
        assert not all(
            torch.equal(before[k], states[f"v{version}-after"][k]) for k in before
        )  # it trained
    saved = torch.load(tmp_path / "seed0" / "hard" / "checkpoints" / "v2.ckpt", weights_only=False)
    for key, value in states["v2-after"].items():  # the checkpoint holds the trained v2
        torch.testing.assert_close(saved["state_dict"][f"student.{key}"], value)


def test_stored_predictions_provider(tmp_path):
    from softlabel.loop.references import StoredPredictions

    store = PredictionStore(tmp_path)
    store.write(
        1,
        np.array([7, 3, 5]),
        np.array([0.1, 0.2, 0.3]),
        task="binary",
        checkpoint_sha256="c1",
        data_fingerprint="d1",
    )
    provider = StoredPredictions(store, 1, checkpoint_sha256="c1", data_fingerprint="d1")
    assert isinstance(provider, torch.nn.Module) and provider.kind == "previous_probs"
    out = provider(torch.zeros(2, 4), torch.tensor([5, 7]))
    torch.testing.assert_close(out, torch.tensor([0.3, 0.1]))
    with pytest.raises(StaleStoreError, match="checkpoint_sha256"):
        StoredPredictions(store, 1, checkpoint_sha256="c2")
    with pytest.raises(KeyError):
        provider(torch.zeros(1, 4), torch.tensor([4]))


def test_bad_method_and_versions(tmp_path):
    with pytest.raises(ValueError, match="methods must be distinct names"):
        run_job(_config([*TINY_CLICKLOG, "method=ls"]), tmp_path)
    with pytest.raises(ValueError, match=r"versions=3; allowed: 2, since the stream has 2 chunks"):
        run_job(_config([*TINY_CLICKLOG, "loop.stream.num_days=2"]), tmp_path)
