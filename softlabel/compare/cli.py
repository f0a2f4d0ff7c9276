"""``softlabel-compare``: train methods x seeds and compare them, or only aggregate runs.

Two forms of one command::

    softlabel-compare [HYDRA OVERRIDES]              # a Hydra app, config conf/compare.yaml
    softlabel-compare aggregate DIR... [--out OUT]   # only aggregate existing run directories

The Hydra form trains what is not finished yet (see :mod:`softlabel.compare.plan`) and
writes ``results.csv``, ``summary.md`` and ``plots/`` into ``out``. With ``runs=[DIR,...]``
it only aggregates those directories, like the ``aggregate`` form.
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
):
    """Aggregate every run found below ``dirs`` into ``out`` (no training).

    Returns the :class:`~softlabel.compare.report.Report`.
    """
    from .report import write_report
    from .runs import load_runs
    from .table import DEFAULT_METRICS

    records = load_runs(list(dirs))
    if not records:
        raise ValueError(f"dirs {list(map(str, dirs))} hold no run directory (no metrics.json)")
    methods = sorted({r.method for r in records}, key=_natural_key)
    return write_report(
        records,
        out,
        title=title,
        methods=methods,
        metrics=metrics or DEFAULT_METRICS,
        n_bins=n_bins,
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

    from .launch import run_plan
    from .plan import plan_from_config
    from .report import write_report
    from .table import DEFAULT_METRICS

    console = console or Console(stderr=True)
    metrics = config.get("metrics") or DEFAULT_METRICS
    n_bins = int(config.get("n_bins", 15))
    if config.get("runs"):
        return aggregate(
            config["runs"],
            config["out"],
            title=str(config.get("name", "Comparison")),
            metrics=metrics,
            n_bins=n_bins,
        )
    plan = plan_from_config(config)
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
    )
    failed = [r for r in records if not r.ok]
    console.print(
        f"{len(records) - len(failed)} of {len(records)} runs finished; summary: {report.summary}",
        soft_wrap=True,
    )
    return report


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
    args = parser.parse_args(list(argv))
    report = aggregate(args.dirs, args.out or args.dirs[0], title=args.title, metrics=args.metrics)
    print(f"wrote {report.results}, {report.summary} and {len(report.plots)} plots")
    return 0


def _config(cfg) -> dict:
    """The composed config as a plain dict, resolved, without Hydra's node."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
    )
    assert isinstance(config, dict)
    return config


def _job(cfg) -> None:
    """The Hydra task: run (or aggregate) the comparison."""
    compare(_config(cfg))


def _check(cfg) -> None:
    """The plan checked before Hydra writes ``out`` (method and pretrained entries, seeds,
    launch, headline, threads, ...)."""
    from .plan import plan_from_config

    config = _config(cfg)
    if not config.get("runs"):
        plan_from_config(config)


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


def main() -> None:
    """Console entry point ``softlabel-compare``."""
    if len(sys.argv) > 1 and sys.argv[1] == "aggregate":
        sys.exit(_aggregate_main(sys.argv[2:]))
    _hydra_main()


if __name__ == "__main__":
    main()
