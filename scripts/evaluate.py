"""Evaluate a saved mechanism: ``python scripts/evaluate.py mechanism=PATH [profiles=10000] [seed=0] [out=PATH]``."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from dmd_torch.checks import check_bool, check_int
from dmd_torch.evaluation import evaluate, ic_audit
from dmd_torch.runtime import tune_allocator
from dmd_torch.storage import load_mechanism, write_json


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        _evaluate(cfg)
    except (ValueError, FileNotFoundError) as err:  # bad input: one line, no traceback
        raise SystemExit(f"error: {err}") from None


def _evaluate(cfg: DictConfig) -> None:
    for key in ("profiles", "audit_profiles"):
        check_int(key, cfg[key], minimum=2)
    if check_bool("tune_allocator", cfg.tune_allocator):
        tune_allocator()
    path = Path(hydra.utils.to_absolute_path(cfg.mechanism))
    ama = load_mechanism(path)
    result = evaluate(ama, profiles=cfg.profiles, seed=cfg.seed).to_dict()
    setting = ama.setting
    audit_types = setting.sample_types(cfg.audit_profiles, torch.Generator().manual_seed(int(cfg.seed) + 1))
    audit = ic_audit(ama, audit_types, seed=cfg.seed + 2)
    result.update(
        env=setting.env_block(),
        mechanism=str(path),
        max_ic_gain=audit.max_ic_gain,
        min_truthful_utility=audit.min_truthful_utility,
        audit_misreports=audit.misreports,
    )
    out = Path(hydra.utils.to_absolute_path(cfg.out)) if cfg.out else (path if path.is_dir() else path.parent) / "evaluation.json"
    write_json(out, result)
    better = "higher" if setting.maximize else "lower"
    print(f"{setting!r}")
    print(f"{result['objective']} ({better} is better) on {result['profiles']} profiles, seed {result['seed']}:")
    print(f"  mechanism  {result['mean']:.4f} +- {result['stderr']:.4f}")
    print(f"  VCG        {result['vcg_mean']:.4f} +- {result['vcg_stderr']:.4f}")
    if result["known_optimum"] is not None:
        print(f"  optimum    {result['known_optimum']:.4f} (ratio {result['optimality_ratio']:.4f})")
    print(f"  IC audit   max gain from lying {audit.max_ic_gain:.2e} over {audit.misreports} misreports; "
          f"min truthful utility {audit.min_truthful_utility:.4f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
