"""Run a :class:`~softlabel.compare.plan.ComparePlan`: skip finished runs, launch the rest
as subprocesses with a progress display, and collect every run (finished or failed)."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from ._io import tail_lines
from .plan import ComparePlan, Job
from .runs import RunRecord, read_metrics, read_run

__all__ = ["changed_overrides", "pending_seeds", "run_plan"]

POLL_SECONDS = 0.5


def changed_overrides(run_dir: Path, expected: Sequence[str]) -> list[str]:
    """Overrides that differ between a finished run's ``.hydra/overrides.yaml`` and ``expected``.

    Empty when they agree or the run recorded none. Listed as ``-old`` / ``+new``.
    """
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    from omegaconf import OmegaConf

    recorded = _normalized([str(o) for o in OmegaConf.load(path)])
    wanted = _normalized(list(expected))
    return [f"-{o}" for o in sorted(recorded - wanted)] + [
        f"+{o}" for o in sorted(wanted - recorded)
    ]


def _normalized(overrides: list[str]) -> set[str]:
    """Overrides as Hydra records them (``x=true`` -> ``x=True``; a repeated key keeps its
    last value), ``hydra.*`` left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        # a key given twice keeps its last value, as in the sweep's job overrides
        last = {o.get_key_element(): o.get_value_element_as_str() for o in parsed}
        text = {f"{key}={value}" for key, value in last.items()}
    except Exception:  # not parseable as Hydra overrides: compare the raw strings
        text = set(overrides)
    return {o for o in text if not o.startswith("hydra.")}


def pending_seeds(plan: ComparePlan) -> tuple[dict[str, list[int]], list[str]]:
    """Seeds still to run per method / pretrained name (no complete ``metrics.json``),
    and a warning for each finished run whose overrides differ from the plan's."""
    todo: dict[str, list[int]] = {}
    warnings: list[str] = []
    for job in plan.jobs():
        for seed, run_dir in job.run_dirs.items():
            if read_metrics(run_dir) is None:
                todo.setdefault(job.name, []).append(seed)
            else:
                diff = changed_overrides(run_dir, job.expected.get(seed, ()))
                if diff:
                    warnings.append(
                        f"{run_dir} finished with other overrides ({' '.join(diff)}); "
                        "kept as is: delete the directory to re-run it"
                    )
    return todo, warnings


class _Running:
    """One launched command: its process and open log file."""

    def __init__(self, job: Job, log_path: Path, env: dict[str, str] | None) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.job, self.log_path = job, log_path
        env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in finish)
        self.log.write(f"$ {shlex.join(job.argv)}\n")
        self.log.flush()
        try:
            self.process = subprocess.Popen(
                job.argv, stdout=self.log, stderr=subprocess.STDOUT, env=env
            )
        except BaseException:
            self.log.close()
            raise

    def poll(self) -> int | None:
        code = self.process.poll()
        if code is not None:
            self.log.close()
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait()
        self.log.close()


def _record(
    run_dir: Path, name: str, seed: int, role: str, log: Path | None, tail: int, reason: str
) -> RunRecord:
    if run_dir.is_dir():
        record = read_run(run_dir, role=role)
        record.method, record.seed = name, seed
        if record.ok:
            return record
    else:
        record = RunRecord(run_dir, name, seed, "failed", role=role)
    if reason:
        record.error = reason
    elif log is not None and log.is_file():
        record.error, record.log = tail_lines(log, tail), log
    return record


def run_plan(
    plan: ComparePlan,
    *,
    progress: bool = True,
    log_tail_lines: int = 40,
    console=None,
    jobs: int = 1,
) -> tuple[list[RunRecord], list[str]]:
    """Launch every unfinished run of ``plan`` (pretrained models first) and collect all runs.

    Up to ``jobs`` commands run at once (each a training command of ``plan``); a method
    starts once the pretrained models it needs have finished.

    A run whose command fails is recorded as failed with the tail of its command's log;
    the other runs go on. Methods whose pretrained model failed are not launched.
    Returns the records (pretrained first, then methods x seeds in plan order) and notes.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    console = console or Console(stderr=True)
    todo, notes = pending_seeds(plan)
    for note in notes:
        console.print(f"[yellow]warning:[/] {note}", soft_wrap=True)
    all_jobs = plan.jobs()
    run_dirs: dict[str, list[Path]] = {}
    for job in all_jobs:
        run_dirs.setdefault(job.name, []).extend(job.run_dirs.values())
    logs: dict[tuple[str, int], Path] = {}
    reasons: dict[str, str] = {}
    failed_pretrained: set[str] = set()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, disable=not progress) as bar:
        tasks = {name: bar.add_task(name, total=len(dirs)) for name, dirs in run_dirs.items()}

        def refresh() -> None:
            for name, dirs in run_dirs.items():
                bar.update(tasks[name], completed=sum(read_metrics(d) is not None for d in dirs))

        refresh()
        waiting = plan.jobs(todo)  # pretrained jobs first: methods wait for what they need
        running: list[_Running] = []
        pending_pretrained = {j.name for j in waiting if j.role == "pretrained"}

        def finish(item: _Running, code: int) -> None:
            job = item.job
            unfinished = [s for s, d in job.run_dirs.items() if read_metrics(d) is None]
            if job.role == "pretrained":
                pending_pretrained.discard(job.name)
                if unfinished:
                    failed_pretrained.add(job.name)
            status = "[green]ok[/]" if not unfinished else f"[red]failed seeds {unfinished}[/]"
            console.print(
                f"{job.log_name}: {status} (exit code {code}, log {item.log_path})",
                soft_wrap=True,
            )

        try:
            while waiting or running:
                for job in list(waiting):
                    if len(running) >= jobs:
                        break
                    missing = [n for n in job.needs if n in failed_pretrained]
                    if missing:
                        waiting.remove(job)
                        reasons[job.name] = f"not run: pretrained model(s) {missing} failed"
                        console.print(f"[red]skipped[/] {job.log_name}: {reasons[job.name]}")
                        continue
                    if any(n in pending_pretrained for n in job.needs):
                        continue  # its teacher / previous model is still training
                    waiting.remove(job)
                    log_path = plan.out / "logs" / f"{job.log_name}.log"
                    logs.update({(job.name, seed): log_path for seed in job.run_dirs})
                    running.append(_Running(job, log_path, dict(plan.env)))
                refresh()
                if not running:
                    continue  # everything left was skipped
                time.sleep(POLL_SECONDS)
                for item in list(running):
                    code = item.poll()
                    if code is not None:
                        running.remove(item)
                        finish(item, code)
                refresh()
        except BaseException:
            for item in running:
                item.stop()
            raise
    records = [
        _record(
            run_dir,
            job.name,
            seed,
            job.role,
            logs.get((job.name, seed)),
            log_tail_lines,
            reasons.get(job.name, ""),
        )
        for job in all_jobs
        for seed, run_dir in job.run_dirs.items()
    ]
    return records, notes
