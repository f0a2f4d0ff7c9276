"""``softlabel-loop``: versioned retraining with ReLoop over a stream of data chunks (Hydra app).

    softlabel-loop                                            # click-log stream, ReLoop, 5 versions
    softlabel-loop method=hard warm_start=false
    softlabel-loop methods=[reloop,hard,kd] seeds=[0,1,2]     # compare in one command
    softlabel-loop loop/stream=digits loop/model=mlp

Lightning and the training code are imported inside the job, so ``--help`` answers at once.
"""

from __future__ import annotations

from omegaconf import DictConfig

from softlabel._conf import CONF_DIR
from softlabel._hydra_app import hydra_app
from softlabel.loop.resolvers import register_resolvers

__all__ = ["CONF_DIR", "main"]

register_resolvers()


def _job(cfg: DictConfig) -> None:
    """The Hydra task: trains every (seed, method) run and writes the report."""
    from hydra.core.hydra_config import HydraConfig

    from softlabel.loop.job import run_job

    run_job(cfg, HydraConfig.get().runtime.output_dir)


main = hydra_app(_job, config_name="loop")
"""Console entry point ``softlabel-loop``: the config checked (unknown keys refused), then
the Hydra app (conf/loop.yaml)."""


if __name__ == "__main__":
    main()
