"""Train an AMA: ``python scripts/train.py [env=...] [method=...] [key=value ...]`` (see conf/config.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dmd_torch.app import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
