"""OnlineLabelSmoothing across two CPU processes (gloo): the ranks agree on the next prior,
which is the prior of one process that saw both ranks' batches."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from softlabel import SoftTargetLoss
from softlabel.targets import OnlineLabelSmoothing

K = 4


def _shard(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank r's batch: logits and labels, about half of them predicted correctly."""
    generator = torch.Generator().manual_seed(100 + rank)
    logits = torch.randn(30, K, generator=generator, dtype=torch.float64) * 2
    target = torch.randint(0, K, (30,), generator=generator)
    return logits, target


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        source = OnlineLabelSmoothing(0.5)
        source.on_train_batch_end(*_shard(rank))
        partial = source.get_extra_state()  # this rank's statistics, mid-epoch
        source.on_train_epoch_end()  # default reduction: torch.distributed.all_reduce
        restored = OnlineLabelSmoothing(0.5)
        restored.set_extra_state(partial)
        torch.save(
            {"prior": source.prior, "restored_counts": restored.statistics[1]}, f"{out}/{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_agree_on_the_prior_of_all_their_batches(tmp_path):
    # fork: the children start at once; like DataLoader workers they run on one thread
    # (torch.set_num_threads(1) first), since the parent's OpenMP threads do not survive fork
    mp.start_processes(
        _worker,
        args=(2, str(tmp_path / "init"), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1)]
    assert torch.equal(ranks[0]["prior"], ranks[1]["prior"])
    single = OnlineLabelSmoothing(0.5)
    for rank in (0, 1):
        single.on_train_batch_end(*_shard(rank))
    single.on_train_epoch_end()
    torch.testing.assert_close(ranks[0]["prior"], single.prior, rtol=1e-12, atol=1e-12)
    # a checkpoint holds rank 0's partial statistics: rank 1 restores none of them
    assert ranks[0]["restored_counts"].sum() > 0 and ranks[1]["restored_counts"].sum() == 0


class RecordPrior(L.Callback):
    """Saves each rank's prior when training ends."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.save(pl_module.loss.source.prior, f"{self.out}/lightning{trainer.global_rank}.pt")


@pytest.mark.slow
def test_lightning_ddp_ranks_agree(tmp_path):
    """SoftLabelModule under DDP: the epoch hook sums the statistics over the ranks through
    the strategy, so both ranks train epoch 2 against the same prior."""
    from softlabel.modules import SoftLabelModule

    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 4, generator=generator), torch.randint(0, 3, (48,), generator=generator)
    data = torch.utils.data.TensorDataset(x, y, torch.arange(48))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    module = SoftLabelModule(
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)),
        SoftTargetLoss(OnlineLabelSmoothing(0.5)),
        optimizer=functools.partial(torch.optim.SGD, lr=0.5),
        num_classes=3,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RecordPrior(str(tmp_path))],
    )
    trainer.fit(module, loader)
    priors = [torch.load(tmp_path / f"lightning{r}.pt", weights_only=True) for r in (0, 1)]
    assert torch.equal(priors[0], priors[1])
    assert not torch.allclose(priors[0], torch.full((3, 3), 1 / 3, dtype=torch.float64))
