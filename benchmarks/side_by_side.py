"""Run a benchmark of this checkout and of an earlier revision side by side, alternately.

The same benchmark script (this checkout's) is run with ``PYTHONPATH`` pointing at this
checkout and at a ``git worktree`` of ``--base``, alternating the two ``--rounds`` times
(base, new, new, base, ...) so that a change of the machine's load reaches both alike. Each
run reports its own ratios to the references it measures (``time / ref``, ``time / (a)``,
...); this script collects every markdown table row of every run and prints, per variant,
the median of each ratio column for the base and for this checkout and their quotient
(new / base: below 1 is faster or smaller now).

    python benchmarks/side_by_side.py --base 831ca38 --rounds 2 -- \\
        benchmarks/loss.py --threads 2 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_tables(text: str) -> dict[tuple[str, str], dict[str, float]]:
    """{(table title, variant): {column: value}} of every markdown table in ``text``; the
    title is the last ``#`` heading above the table."""
    rows: dict[tuple[str, str], dict[str, float]] = {}
    title, header = "", None
    for line in text.splitlines():
        if line.startswith("#"):
            title, header = line.lstrip("# ").strip(), None
        elif line.startswith("|") and header is None:
            header = [cell.strip() for cell in line.strip().strip("|").split("|")]
        elif line.startswith("|---") or line.startswith("|:--"):
            continue
        elif line.startswith("|") and header is not None:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            values = {}
            for name, cell in zip(header[1:], cells[1:]):
                number = re.fullmatch(r"-?\d+(\.\d+)?", cell)
                if number:
                    values[name] = float(cell)
            rows[(title, cells[0])] = values
        else:
            header = None if not line.strip() else header
    return rows


def run(script_args: list[str], tree: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, *script_args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{script_args} on {tree} failed:\n{done.stderr[-3000:]}")
    return done.stdout


@contextlib.contextmanager
def base_worktree(revision: str) -> Iterator[Path]:
    """A temporary ``git worktree`` of ``revision`` (removed afterwards)."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), revision],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the earlier revision (a git ref)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each revision")
    parser.add_argument("script", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS]")
    args = parser.parse_args(argv)
    script = [a for a in args.script if a != "--"]
    runs: dict[str, list[dict]] = defaultdict(list)
    with base_worktree(args.base) as base_tree:
        for round_index in range(args.rounds):
            order = ("base", "new") if round_index % 2 == 0 else ("new", "base")
            for name in order:
                tree = base_tree if name == "base" else ROOT
                print(f"round {round_index}: {name}", file=sys.stderr, flush=True)
                runs[name].append(parse_tables(run(script, tree)))
    print(f"base {args.base} against this checkout, {args.rounds} runs each: {' '.join(script)}")
    print()
    print("| table | variant | column | base | new | new / base |")
    print("|---|---|---|---:|---:|---:|")
    keys = [key for key in runs["new"][0] if key in runs["base"][0]]
    for key in keys:
        for column in runs["new"][0][key]:
            values = {}
            for name in ("base", "new"):
                found = [r[key][column] for r in runs[name] if column in r.get(key, {})]
                values[name] = statistics.median(found) if found else None
            if values["base"] is None or values["new"] is None:
                continue
            quotient = values["new"] / values["base"] if values["base"] else float("nan")
            print(
                f"| {key[0]} | {key[1]} | {column} | {values['base']:g} | {values['new']:g} | "
                f"{quotient:.2f} |"
            )


if __name__ == "__main__":
    main()
