"""``softlabel-loop``: versioned retraining with ReLoop over a stream of data chunks (Hydra app).

    softlabel-loop                                            # click-log stream, ReLoop, 5 versions
    softlabel-loop method=hard warm_start=false
    softlabel-loop methods=[reloop,hard,kd] seeds=[0,1,2]     # compare in one command
    softlabel-loop loop/stream=digits loop/model=mlp

Lightning and the training code are imported inside the job, so ``--help`` answers at once.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from softlabel._conf import CONF_DIR
from softlabel.loop.resolvers import register_resolvers

__all__ = ["CONF_DIR", "main"]

register_resolvers()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="loop")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: trains every (seed, method) run and writes the report."""
    from hydra.core.hydra_config import HydraConfig

    from softlabel.loop.job import run_job

    run_job(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
