"""Schedules: values at 0, 0.5 and 1; as_schedule; validation."""

import math

import pytest

from softlabel.schedules import Constant, Cosine, Linear, Step, as_schedule
from softlabel.targets import ClassPrior, PreviousModel, Teacher, UniformPrior


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (Constant(0.3), (0.3, 0.3, 0.3)),
        (Linear(0.2, 0.0), (0.2, 0.1, 0.0)),
        (Linear(1.0, 4.0), (1.0, 2.5, 4.0)),
        (Cosine(0.2, 0.0), (0.2, 0.1, 0.0)),
        (Cosine(1.0, 5.0), (1.0, 3.0, 5.0)),
        (Step(0.2, 0.0), (0.2, 0.0, 0.0)),  # at the milestone the next value is in force
        (Step(0.0, 0.9, milestones=(0.25, 0.75)), (0.0, 0.45, 0.9)),
    ],
    ids=repr,
)
def test_values_at_0_half_1(schedule, expected):
    for progress, value in zip((0.0, 0.5, 1.0), expected):
        assert math.isclose(schedule(progress), value, abs_tol=1e-12), progress


def test_cosine_is_cosine_annealing_between_points():
    schedule = Cosine(1.0, 0.0)
    assert math.isclose(schedule(0.25), (1 + math.cos(math.pi / 4)) / 2)
    assert schedule(0.25) > Linear(1.0, 0.0)(0.25)


def test_step_is_piecewise_constant_with_evenly_spaced_values():
    schedule = Step(1.0, 4.0, milestones=[0.2, 0.4, 0.6])
    assert schedule.milestones == (0.2, 0.4, 0.6)
    values = [schedule(p) for p in (0.0, 0.19, 0.2, 0.39, 0.4, 0.59, 0.6, 1.0)]
    assert values == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]


@pytest.mark.parametrize("progress", [-0.01, 1.01, float("nan")])
def test_progress_outside_unit_interval_raises(progress):
    with pytest.raises(ValueError, match="progress must be in"):
        Linear(0.0, 1.0)(progress)


def test_as_schedule_accepts_number_schedule_and_mapping():
    assert as_schedule(0.1) == Constant(0.1)
    linear = Linear(0.2, 0.0)
    assert as_schedule(linear) is linear
    assert as_schedule({"kind": "linear", "start": 0.2, "end": 0.0}) == linear
    assert as_schedule({"kind": "cosine", "start": 1, "end": 0}) == Cosine(1.0, 0.0)
    assert as_schedule({"kind": "step", "start": 1, "end": 0, "milestones": [0.3]}) == Step(
        1.0, 0.0, (0.3,)
    )
    assert as_schedule({"kind": "constant", "value": 2}) == Constant(2.0)


@pytest.mark.parametrize(
    ("value", "error", "pattern"),
    [
        ({"kind": "exponential", "start": 1, "end": 0}, ValueError, "kind.*exponential"),
        ({"start": 1, "end": 0}, ValueError, "kind.*None"),
        ({"kind": "linear", "begin": 1}, TypeError, "linear"),
        ("0.1", TypeError, "schedule.*'0.1'"),
        (True, TypeError, "schedule.*True"),
    ],
)
def test_as_schedule_rejects_bad_values(value, error, pattern):
    with pytest.raises(error, match=pattern):
        as_schedule(value)


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: Step(1.0, 0.0, milestones=(0.6, 0.4)), "milestones.*increasing"),
        (lambda: Step(1.0, 0.0, milestones=()), "milestones"),
        (lambda: Step(1.0, 0.0, milestones=(1.5,)), r"milestones.*\[0, 1\]"),
        (lambda: Linear(float("nan"), 0.0), "start.*finite"),
        (lambda: Constant(float("inf")), "value.*finite"),
    ],
)
def test_schedule_arguments_are_validated(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_source_value_changes_with_progress():
    source = UniformPrior(smoothing=Linear(0.2, 0.0))
    assert source.smoothing == pytest.approx(0.2)
    source.set_progress(0.5)
    assert source.smoothing == pytest.approx(0.1)
    assert source.values() == {"smoothing": pytest.approx(0.1)}
    source.set_progress(1.0)
    assert source.values() == {"smoothing": pytest.approx(0.0)}
    teacher = Teacher(
        temperature=Cosine(8.0, 2.0), alpha={"kind": "step", "start": 0.0, "end": 1.0}
    )
    teacher.set_progress(0.5)
    assert teacher.values() == {"temperature": pytest.approx(5.0), "alpha": pytest.approx(1.0)}


def test_schedule_values_are_validated_by_the_source():
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\), got 1.2.*Linear"):
        UniformPrior(smoothing=Linear(1.2, 0.0))
    with pytest.raises(ValueError, match=r"temperature must be .*, got -1\.0 .*Linear"):
        Teacher(temperature=Linear(4.0, -1.0))
    with pytest.raises(ValueError, match="alpha.*1.5"):
        Teacher(alpha=1.5)
    with pytest.raises(ValueError, match="progress"):
        UniformPrior().set_progress(2.0)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (
            lambda: UniformPrior(smoothing=NAN),
            ValueError,
            "smoothing must be a finite number, got nan",
        ),
        (
            lambda: UniformPrior(smoothing=INF),
            ValueError,
            "smoothing must be a finite number, got inf",
        ),
        (
            lambda: ClassPrior(smoothing=-INF),
            ValueError,
            "smoothing must be a finite number, got -inf",
        ),
        (
            lambda: Teacher(temperature=NAN),
            ValueError,
            "temperature must be a finite number, got nan",
        ),
        (lambda: Teacher(alpha=INF), ValueError, "alpha must be a finite number, got inf"),
        (
            lambda: PreviousModel(alpha="0.5"),
            TypeError,
            "alpha must be a finite number, a softlabel.schedules.Schedule or a mapping with a "
            "'kind' key, got '0.5'",
        ),
        (
            lambda: UniformPrior(smoothing=True),
            TypeError,
            "smoothing must be a finite number, a softlabel.schedules.Schedule or a mapping "
            "with a 'kind' key, got True",
        ),
        (
            lambda: Teacher(temperature={"kind": "linear", "start": NAN, "end": 1.0}),
            ValueError,
            "temperature: linear schedule: start must be a finite number, got nan",
        ),
        (
            lambda: UniformPrior(smoothing={"kind": "cubic"}),
            ValueError,
            "smoothing: schedule kind must be one of ['constant', 'cosine', 'linear', 'step'], "
            "got 'cubic' (in {'kind': 'cubic'})",
        ),
        (
            lambda: Teacher(alpha={"kind": "step", "start": 0, "end": 1, "milestones": 0.5}),
            TypeError,
            "alpha: bad arguments for schedule kind 'step': milestones must be a sequence of "
            "numbers in [0, 1], got 0.5",
        ),
    ],
)
def test_bad_hyper_parameter_errors_name_the_parameter(make, error, message):
    with pytest.raises(error) as caught:
        make()
    assert str(caught.value) == message
