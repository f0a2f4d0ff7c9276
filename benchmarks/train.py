"""Cost of knowledge distillation from the offline teacher cache, and what top-k keeps.

    .venv/bin/python benchmarks/train.py --topk-tasks   # speed only (docs/teacher_cache.md)
    .venv/bin/python benchmarks/train.py --datasets     # top-k only
    .venv/bin/python benchmarks/train.py --quick        # a smoke run (numbers not meaningful)

1. Speed, per dataset (digits, mnist_subset; the digits_kd recipe: student mlp_small,
   teacher mlp_large): seconds per training epoch of hard-label training, of KD from a
   dense cache and of KD with the live teacher. All three use the same data module,
   student, optimizer and scheduler and the same ``lightning.Trainer`` settings
   (CPU, no validation, no logger, no checkpointing, no progress bar); an epoch is timed
   from ``on_train_epoch_start`` to ``on_train_epoch_end``. The modes are interleaved
   repeat by repeat; the first epoch of every fit is dropped as warm-up and the median
   over the rest is reported, with its ratio to the hard-label median.
2. Top-k, on K = 100 tasks (``--topk-tasks``: ``mixture``, a Gaussian mixture of 100 classes
   in 20 superclasses with a strong teacher, and the built-in ``synthetic(num_classes=100)``
   with a weak one): the share of the teacher's softened distribution the top-k keep,
   at several T (``topk_mass``); bytes on disk of the dense and the top-k caches (k in 1,
   5, 10, 20) and the test accuracy (last epoch, no model selection) of KD students
   trained from each at each ``--temperatures``, with the same seeds for every cache.

The teachers are trained here first (hard labels, same Trainer settings); caches are
written with ``softlabel.cache_cli.build_cache`` (what ``softlabel-cache`` runs).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")
SYNTHETIC_100 = [
    "data=synthetic",
    "data.source.num_classes=100",
    "data.source.num_samples=20000",
    "data.source.num_features=32",
    "data.batch_size=256",
]
SPEED_MODES = ("hard", "kd_cache", "kd_live")
#: diagnostic modes (``--quiet-modes``): the same KD runs with nothing logged for the KD
#: hyper-parameters (SoftLabelModule logs ``source.values()`` every ``log_every_n_steps``)
QUIET_MODES = ("kd_cache_quiet", "kd_live_quiet")


def compose_config(name: str, overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(name, overrides=overrides)


def make_trainer(epochs: int, callbacks: list[Any]) -> Any:
    import lightning as L

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-fit banners
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        deterministic=True,
        callbacks=callbacks,
    )


def epoch_timer() -> Any:
    """A Lightning callback collecting the wall time of every training epoch."""
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def build_module(cfg: Any, datamodule: Any) -> Any:
    """The SoftLabelModule ``softlabel-train`` would build from ``cfg`` (same builders)."""
    from hydra.utils import instantiate

    from softlabel.modules import SoftLabelModule
    from softlabel.modules.build import (
        build_loss,
        build_model,
        build_reference_provider,
        scheduler_parts,
    )

    loss = build_loss(cfg, datamodule)
    provider, _ = build_reference_provider(cfg, loss.source.reference, datamodule)
    scheduler, interval = scheduler_parts(cfg)
    return SoftLabelModule(
        build_model(cfg.student, datamodule),
        loss,
        optimizer=instantiate(cfg.optimizer, _partial_=True),
        scheduler=scheduler,
        scheduler_interval=interval,
        reference_provider=provider,
        num_classes=int(datamodule.num_classes),
    )


def fit(
    cfg: Any, datamodule: Any, epochs: int, seed: int, quiet: bool = False
) -> tuple[Any, list[float]]:
    """Train the module of ``cfg`` for ``epochs``; returns (trainer, seconds per epoch).

    ``quiet``: the target source reports no hyper-parameters, so nothing extra is logged
    per step (a diagnostic of where the KD overhead goes).
    """
    import lightning as L

    L.seed_everything(seed, workers=True, verbose=False)
    module = build_module(cfg, datamodule)
    if quiet:
        module.loss.source.values = dict
    timer = epoch_timer()
    trainer = make_trainer(epochs, [timer])
    trainer.fit(module, datamodule=datamodule)
    return trainer, timer.seconds


def test_accuracy(trainer: Any, datamodule: Any) -> float:
    (result,) = trainer.test(trainer.lightning_module, datamodule=datamodule, verbose=False)
    return float(result["test/acc"])


def train_teacher(data: list[str], datamodule: Any, epochs: int, path: Path) -> Path:
    cfg = compose_config("train", [*data, "student=mlp_large", "target=hard"])
    trainer, _ = fit(cfg, datamodule, epochs, seed=0)
    torch.save(trainer.lightning_module.student.state_dict(), path)
    print(f"  teacher mlp_large: test acc {test_accuracy(trainer, datamodule):.4f}", flush=True)
    return path


def write_cache(data: list[str], checkpoint: Path, out: Path, kind: str, k: int = 10) -> Any:
    from softlabel.cache import TeacherCache
    from softlabel.cache_cli import build_cache

    overrides = [*data, "teacher=mlp_large", f"teacher.checkpoint={checkpoint}", f"out={out}"]
    overrides += [f"kind={kind}", f"k={k}", "progress=false", "overwrite=true"]
    return TeacherCache.open(build_cache(compose_config("cache", overrides)))


def speed(
    dataset: str, work: Path, epochs: int, repeats: int, teacher_epochs: int, quiet: bool
) -> list[str]:
    """Median seconds per epoch of hard / KD-from-cache / KD-live training, and ratios."""
    from softlabel.modules.build import build_datamodule

    data = [f"data={dataset}"]
    print(f"[speed] {dataset}", flush=True)
    datamodule = build_datamodule(compose_config("train", data))
    checkpoint = train_teacher(data, datamodule, teacher_epochs, work / f"{dataset}_teacher.pt")
    cache = write_cache(data, checkpoint, work / f"{dataset}_dense", "dense")
    student = [*data, "student=mlp_small"]
    configs = {
        "hard": compose_config("train", [*student, "target=hard"]),
        "kd_cache": compose_config(
            "train", [*student, "target=kd", "teacher=cached", f"teacher.cache={cache.path}"]
        ),
        "kd_live": compose_config(
            "train",
            [*student, "target=kd", "teacher=mlp_large", f"teacher.checkpoint={checkpoint}"],
        ),
    }
    modes = SPEED_MODES + (QUIET_MODES if quiet else ())
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    for repeat in range(repeats):
        for mode in modes:
            base, quiet = mode.removesuffix("_quiet"), mode.endswith("_quiet")
            _, per_epoch = fit(configs[base], datamodule, epochs, seed=repeat, quiet=quiet)
            seconds[mode].extend(per_epoch[1:])
    hard = statistics.median(seconds["hard"])
    rows = []
    for mode in modes:
        median = statistics.median(seconds[mode])
        spread = f"{min(seconds[mode]):.3f}-{max(seconds[mode]):.3f}"
        rows.append(
            f"| {dataset} | {mode} | {median:.3f} | {spread} | {median / hard:.2f}x | "
            f"{len(seconds[mode])} |"
        )
    return rows


def mixture(
    num_samples: int = 20000,
    num_features: int = 32,
    num_classes: int = 100,
    seed: int = 0,
    task: str = "multiclass",
    groups: int = 20,
    group_scale: float = 1.0,
    class_scale: float = 0.45,
) -> Any:
    """A Gaussian mixture with ``num_classes`` classes in ``groups`` superclasses.

    Superclass centres ``c_g ~ N(0, group_scale^2 I)``, class means
    ``m_j = c_{j mod groups} + N(0, class_scale^2 I)``, samples ``x = m_y + N(0, I)`` with
    uniform labels. With the defaults (100 classes in 20 groups of 5, like CIFAR-100's
    superclasses) the Bayes classifier is right about 88% of the time and its errors fall
    mostly on sibling classes.
    """
    import numpy as np

    from softlabel.data import ArraySource

    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, group_scale, (groups, num_features))
    means = centres[np.arange(num_classes) % groups]
    means = means + rng.normal(0.0, class_scale, (num_classes, num_features))
    y = rng.integers(0, num_classes, num_samples)
    X = means[y] + rng.normal(0.0, 1.0, (num_samples, num_features))
    return ArraySource(
        name=f"mixture{num_classes}_g{groups}",
        X=X,
        y=y,
        num_classes=num_classes,
        input_shape=(num_features,),
        task=task,
    )


#: the top-k tasks (K = 100): data overrides of the training app's config
TOPK_TASKS = {
    "synthetic": SYNTHETIC_100,
    "mixture": [*SYNTHETIC_100, f"data.source._target_={__name__}.mixture"],
}


def topk_mass(cache: Any, datamodule: Any, ks: list[int], temperatures: list[float]) -> list[str]:
    """How much of the teacher's distribution at T the top-k keep, over the train split.

    For each T: ``kept`` = mean over rows of the top-k classes' share of ``softmax(z / T)``
    (z: the dense cached logits); ``tail_true`` = 1 - kept, the mass of the other K - k
    classes; ``tail_rebuilt`` = the same classes' share of ``softmax(t / T)`` with t the
    top-k reconstruction (uniform leftover at T = 1, then softened with the rest, the
    ``teacher.tail=uniform`` target); ``tail_bucket`` = the tail bucket's share of the
    k + 1 buckets softened at T (``teacher.tail=bucket``: ``R^(1/T)`` against the kept
    ``p^(1/T)``); ``kl`` = mean KL(softmax(z / T) || softmax(t / T)) in nats.
    """
    from softlabel.cache.reader import reconstruct_topk_logits

    index = torch.as_tensor(datamodule.split.train, dtype=torch.long)
    logits = cache.lookup(index)
    logprob = torch.log_softmax(logits, dim=-1)
    num_classes = logits.shape[-1]
    rows = []
    for k in ks:
        top_logprob, top_index = logprob.topk(k, dim=-1)
        rebuilt = reconstruct_topk_logits(top_index, top_logprob.half(), num_classes)
        tail = torch.ones_like(logprob, dtype=torch.bool).scatter_(1, top_index, False)
        tail_logmass = logprob.masked_fill(~tail, float("-inf")).logsumexp(-1, keepdim=True)
        buckets = torch.cat([top_logprob, tail_logmass], dim=-1)
        for temperature in temperatures:
            true_t = torch.log_softmax(logits / temperature, dim=-1)
            rebuilt_t = torch.log_softmax(rebuilt / temperature, dim=-1)
            tail_true = (true_t.exp() * tail).sum(-1).mean()
            tail_rebuilt = (rebuilt_t.exp() * tail).sum(-1).mean()
            tail_bucket = torch.softmax(buckets / temperature, dim=-1)[:, -1].mean()
            kl = (true_t.exp() * (true_t - rebuilt_t)).sum(-1).mean()
            rows.append(
                f"| {k} | {temperature:g} | {1 - tail_true:.4f} | {tail_true:.4f} | "
                f"{tail_rebuilt:.4f} | {tail_bucket:.4f} | {kl:.4f} |"
            )
    return rows


def topk(
    task: str,
    work: Path,
    args: argparse.Namespace,
) -> None:
    """Bytes and KD test accuracy of dense vs top-k caches on a K = 100 task.

    Prints the mass table (``topk_mass``) and then one accuracy table per KD temperature,
    each as soon as it is complete.
    """
    from softlabel.modules.build import build_datamodule

    data = TOPK_TASKS[task]
    print(f"[topk] {task}, K = 100", flush=True)
    datamodule = build_datamodule(compose_config("train", data))
    checkpoint = train_teacher(data, datamodule, args.teacher_epochs, work / f"{task}_teacher.pt")
    caches = {"dense": write_cache(data, checkpoint, work / f"{task}_dense", "dense")}
    for k in args.ks:
        caches[f"top-{k}"] = write_cache(data, checkpoint, work / f"{task}_top{k}", "topk", k)
    print(f"\n[{task}] share of softmax(z / T) kept by the top-k (train split)")
    print(
        "| k | T | kept (top-k) | tail, teacher | tail, rebuilt | tail, bucket "
        "| KL(teacher_T \\|\\| rebuilt_T) |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(topk_mass(caches["dense"], datamodule, args.ks, args.mass_temperatures)))
    base = [*data, f"student={args.topk_student}"]
    for temperature in args.temperatures:
        accuracy: dict[str, list[float]] = {name: [] for name in ["hard", *caches]}
        for seed in args.seeds:
            hard = compose_config("train", [*base, "target=hard"])
            trainer, _ = fit(hard, datamodule, args.topk_epochs, seed)
            accuracy["hard"].append(test_accuracy(trainer, datamodule))
            for name, cache in caches.items():
                overrides = [*base, "target=kd", f"target.temperature={temperature}"]
                overrides += ["teacher=cached", f"teacher.cache={cache.path}"]
                overrides += [f"teacher.tail={args.tail}"]
                trainer, _ = fit(
                    compose_config("train", overrides), datamodule, args.topk_epochs, seed
                )
                accuracy[name].append(test_accuracy(trainer, datamodule))
            print(
                f"  T={temperature:g} seed {seed}: "
                + ", ".join(f"{n} {v[-1]:.4f}" for n, v in accuracy.items()),
                flush=True,
            )
        print(
            f"\n[{task}] T = {temperature:g}, alpha = 0.9; student {args.topk_student}, "
            f"{args.topk_epochs} epochs; seeds {args.seeds}"
        )
        print(
            "| targets | bytes on disk | bytes / dense | test acc % (mean +- std) "
            "| vs dense (points) | per seed |"
        )
        print("|---|---|---|---|---|---|")
        print("\n".join(accuracy_rows(accuracy, caches)), flush=True)


def accuracy_rows(accuracy: dict[str, list[float]], caches: dict[str, Any]) -> list[str]:
    """Table rows: bytes, bytes / dense, test accuracy mean +- std (points), vs dense."""
    dense_mean = statistics.mean(accuracy["dense"])
    rows = []
    for name, values in accuracy.items():
        size = caches[name].nbytes if name in caches else 0
        ratio = f"{size / caches['dense'].nbytes:.3f}" if name in caches else "-"
        mean = statistics.mean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        per_seed = " ".join(f"{100 * v:.2f}" for v in values)
        label = "hard labels (no teacher)" if name == "hard" else f"KD from {name}"
        rows.append(
            f"| {label} | {size if size else '-'} | {ratio} | {100 * mean:.2f} +- {100 * std:.2f} | "
            f"{100 * (mean - dense_mean):+.2f} | {per_seed} |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per timed fit")
    parser.add_argument("--repeats", type=int, default=3, help="timed fits per mode")
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--topk-epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--datasets", nargs="*", default=["digits", "mnist_subset"])
    parser.add_argument("--quiet-modes", action="store_true", help="add the *_quiet diagnostics")
    parser.add_argument(
        "--topk-tasks", nargs="*", default=["mixture", "synthetic"], choices=sorted(TOPK_TASKS)
    )
    parser.add_argument(
        "--temperatures", type=float, nargs="*", default=[4.0, 2.0], help="KD T of the top-k runs"
    )
    parser.add_argument("--mass-temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--topk-student", default="mlp", help="student config of the top-k runs")
    parser.add_argument(
        "--tail",
        choices=["bucket", "uniform"],
        default="bucket",
        help="teacher.tail of the top-k KD runs (uniform: the reconstruction before version 3)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats, args.teacher_epochs, args.topk_epochs = 2, 1, 1, 1
        args.seeds, args.datasets, args.topk_tasks = [0], ["digits"], ["mixture"]
        args.temperatures = [4.0]
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*`training_step` returns `None`.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*")
    torch.set_num_threads(args.threads)
    print(f"command: {' '.join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)

    with tempfile.TemporaryDirectory(prefix="softlabel-bench-") as tmp:
        work = Path(tmp)
        speed_rows = []
        for dataset in args.datasets:
            speed_rows += speed(
                dataset, work, args.epochs, args.repeats, args.teacher_epochs, args.quiet_modes
            )
        if speed_rows:
            print(
                f"\nSeconds per training epoch (median of {args.repeats} fits x "
                f"{args.epochs - 1} epochs, first epoch dropped)"
            )
            print("| data | mode | s/epoch | min-max | ratio to hard | epochs timed |")
            print("|---|---|---|---|---|---|")
            print("\n".join(speed_rows), flush=True)
        for task in args.topk_tasks:
            topk(task, work, args)
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
