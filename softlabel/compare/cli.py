"""``softlabel-compare``: train methods x seeds and compare them, or only aggregate runs.

Two forms of one command::

    softlabel-compare [HYDRA OVERRIDES]              # a Hydra app, config conf/compare.yaml
    softlabel-compare aggregate DIR... [--out OUT]   # only aggregate existing run directories

The Hydra form trains what is not finished yet (see :mod:`softlabel.compare.plan`) and
writes ``results.csv``, ``differences.csv``, ``summary.md`` and ``plots/`` into ``out``.
With ``runs=[DIR,...]`` it only aggregates those directories, like the ``aggregate`` form.
Both exit with status 1, after writing everything they can, when a run failed, a
predictions file could not be used or a pairing was refused; the last line says so.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Sequence

__all__ = ["aggregate", "compare", "main"]


def aggregate(
    dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    title: str = "Comparison",
    metrics: Sequence[str] | None = None,
    n_bins: int = 15,
    baseline: str | None = None,
    stats=None,
    headline: str = "best",
):
    """Aggregate every run found below ``dirs`` into ``out`` (no training).

    ``baseline``, ``stats`` (a :class:`~softlabel.compare.differences.StatsSettings`) and
    ``headline`` as in :func:`~softlabel.compare.report.write_report`. Returns the
    :class:`~softlabel.compare.report.Report`.
    """
    from .report import write_report
    from .runs import load_runs
    from .table import DEFAULT_METRICS

    records = load_runs(list(dirs))
    if not records:
        raise ValueError(f"dirs {list(map(str, dirs))} hold no run directory (no metrics.json)")
    methods = sorted({r.method for r in records if r.role == "method"}, key=_natural_key)
    return write_report(
        records,
        out,
        title=title,
        methods=methods,
        metrics=metrics or DEFAULT_METRICS,
        n_bins=n_bins,
        baseline=baseline,
        stats=stats,
        headline=headline,
    )


def _natural_key(text: str) -> list:
    """Sort key with numbers compared as numbers: ``eps0.05`` after ``eps0.0``, ``T8`` before ``T20``."""
    return [
        (0, float(part)) if part[:1].isdigit() else (1, part)
        for part in re.findall(r"\d+(?:\.\d+)?|\D+", text)
    ]


def compare(config: dict, *, console=None):
    """Run (or only aggregate, when ``config["runs"]`` is set) a comparison config.

    ``config`` is a plain dict with the keys of ``conf/compare.yaml``. Returns the report
    (``None`` for ``dry_run``).
    """
    from rich.console import Console

    from .differences import StatsSettings, check_baseline
    from .launch import run_plan
    from .plan import HEADLINES, plan_from_config
    from .report import write_report
    from .table import DEFAULT_METRICS

    console = console or Console(stderr=True)
    metrics = config.get("metrics") or DEFAULT_METRICS
    n_bins = int(config.get("n_bins", 15))
    stats = StatsSettings.from_config(config.get("stats"))
    baseline = config.get("baseline")
    if config.get("runs"):
        headline = config.get("headline", "best")
        if headline not in HEADLINES:
            raise ValueError(f"headline must be one of {list(HEADLINES)}, got {headline!r}")
        return aggregate(
            config["runs"],
            config["out"],
            title=str(config.get("name", "Comparison")),
            metrics=metrics,
            n_bins=n_bins,
            baseline=baseline,
            stats=stats,
            headline=headline,
        )
    plan = plan_from_config(config)
    # refused before anything trains
    baseline = check_baseline(baseline, [m.name for m in plan.methods])
    commands = [shlex.join(job.argv) for job in plan.jobs()]
    if config.get("dry_run", False):
        console.print("\n".join(commands), soft_wrap=True, markup=False)
        return None
    records, notes = run_plan(
        plan,
        progress=bool(config.get("progress", True)),
        log_tail_lines=int(config.get("log_tail_lines", 40)),
        console=console,
        jobs=config.get("jobs", 1),
    )
    uses = {m.name: plan.checkpoint_overrides(m) for m in plan.methods if m.checkpoints}
    report = write_report(
        records,
        plan.out,
        title=plan.title,
        methods=[m.name for m in plan.methods],
        metrics=metrics,
        uses=uses,
        commands=commands,
        n_bins=n_bins,
        notes=[f"**Warning:** {n}" for n in notes],
        headline=plan.headline,
        baseline=baseline,
        stats=stats,
    )
    failed = [r for r in records if not r.ok]
    console.print(
        f"{len(records) - len(failed)} of {len(records)} runs finished; summary: {report.summary}",
        soft_wrap=True,
    )
    return report


def _finish(report, console=None) -> int:
    """Print the report's problems, the last line saying what failed; the exit status."""
    if report is None or not report.problems:
        return 0
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    for problem in report.problems:
        console.print(f"[red]problem:[/] {problem}", soft_wrap=True, highlight=False)
    console.print(report.problem_line(), soft_wrap=True, markup=False, highlight=False)
    return 1


def _aggregate_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="softlabel-compare aggregate",
        description="Aggregate existing training runs into results.csv, summary.md and plots/.",
    )
    parser.add_argument("dirs", nargs="+", help="run directories, or directories holding runs")
    parser.add_argument("--out", help="output directory (default: the first DIR)")
    parser.add_argument("--title", default="Comparison", help="title of summary.md")
    parser.add_argument(
        "--metrics", nargs="+", help="metric names (default: acc nll ece auroc logloss)"
    )
    parser.add_argument(
        "--baseline", help="method the others are compared with (default: hard, else the first)"
    )
    parser.add_argument(
        "--headline",
        choices=["best", "last"],
        default="best",
        help="checkpoint of the first table and of the differences shown (default: best)",
    )
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap draws (stats.n_boot)")
    parser.add_argument("--level", type=float, default=0.95, help="interval level (stats.level)")
    parser.add_argument("--stats-seed", type=int, default=0, help="random seed (stats.seed)")
    args = parser.parse_args(list(argv))
    from .differences import StatsSettings

    stats = StatsSettings(n_boot=args.n_boot, level=args.level, seed=args.stats_seed)
    report = aggregate(
        args.dirs,
        args.out or args.dirs[0],
        title=args.title,
        metrics=args.metrics,
        baseline=args.baseline,
        stats=stats,
        headline=args.headline,
    )
    print(f"wrote {report.results}, {report.summary} and {len(report.plots)} plots", flush=True)
    return _finish(report)


def _config(cfg) -> dict:
    """The composed config as a plain dict, resolved, without Hydra's node."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
    )
    assert isinstance(config, dict)
    return config


_STATUS: list[int] = []  # each job's exit status (1: some runs failed)


def _job(cfg) -> None:
    """The Hydra task: run (or aggregate) the comparison."""
    _STATUS.append(_finish(compare(_config(cfg))))


def _check(cfg) -> None:
    """The plan checked before Hydra writes ``out`` (method and pretrained entries, seeds,
    launch, headline, threads, ...), the ``stats`` settings and the baseline."""
    from .differences import StatsSettings, check_baseline
    from .plan import plan_from_config

    config = _config(cfg)
    StatsSettings.from_config(config.get("stats"))
    if not config.get("runs"):
        plan = plan_from_config(config)
        check_baseline(config.get("baseline"), [m.name for m in plan.methods])


def _hydra_main() -> None:
    from softlabel._hydra_app import hydra_app

    from .plan import ENTRY_KEYS

    hydra_app(
        _job,
        config_name="compare",
        schema="compare/base",  # the keys of every comparison config (compare.yaml, recipes)
        entries=ENTRY_KEYS,
        check=_check,
    )()
    if any(_STATUS):
        sys.exit(1)


def main() -> None:
    """Console entry point ``softlabel-compare``."""
    if len(sys.argv) > 1 and sys.argv[1] == "aggregate":
        sys.exit(_aggregate_main(sys.argv[2:]))
    _hydra_main()


if __name__ == "__main__":
    main()
