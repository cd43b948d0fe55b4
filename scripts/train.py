"""Train an AMA: ``python scripts/train.py [env=...] [method=...] [key=value ...]`` (see conf/config.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dmd_torch.app import run
from dmd_torch.config import register_configs
from dmd_torch.regularized import RegularizedSolveError

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (ValueError, FloatingPointError, RegularizedSolveError) as err:  # one line, no traceback
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:  # the run has said what it left behind
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
