"""softlabel-loop checks its arguments before training anything."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

import softlabel.loop.runner as runner
from softlabel.loop.app import CONF_DIR
from softlabel.loop.job import run_job

DIGITS = [
    "loop/stream=digits",
    "loop/model=mlp",
    "loop.model.hidden=[8]",
    "train.epochs=1",
    "train.csv_logs=false",
    "plot=false",
]


def _config(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="loop", overrides=[*DIGITS, *overrides])


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training started before the arguments were checked")

    monkeypatch.setattr(runner, "_fit", refuse)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["versions=1"], r"versions=1; allowed: an integer >= 2 \(v1 is trained on chunk 1"),
        (["versions=0"], r"versions=0; allowed: an integer >= 2"),
        (["versions=two"], r"versions='two'; allowed: an integer >= 2"),
        (
            ["versions=5", "loop.stream.num_chunks=3"],
            r"versions=5; allowed: an integer from 2 to 3, since the stream has 3 chunks",
        ),
        (["versions=2", "threads=-1"], r"threads=-1; allowed: null .* or an integer >= 1"),
    ],
)
def test_bad_loop_arguments_are_refused_before_training(tmp_path, no_training, overrides, message):
    with pytest.raises(ValueError, match=message):
        run_job(_config(*overrides), tmp_path)
    assert not (tmp_path / "seed0").exists()


def test_check_versions():
    from softlabel.loop.runner import check_versions

    assert check_versions(3, 4) == 3
    with pytest.raises(ValueError, match=r"versions=True; allowed"):
        check_versions(True)
    with pytest.raises(ValueError, match="the stream has 1 chunk, but the loop needs at least 2"):
        check_versions(2, 1)
