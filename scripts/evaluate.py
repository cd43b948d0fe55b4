"""Evaluate a saved mechanism: ``python scripts/evaluate.py mechanism=PATH [profiles=10000] [seed=0] [out=PATH]``."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

import torch

from dmd_torch.config import EvaluateConfig, register_configs, to_config
from dmd_torch.evaluation import evaluate, ic_audit
from dmd_torch.results import RunResult, write_result
from dmd_torch.runtime import tune_allocator
from dmd_torch.storage import load_mechanism

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        _evaluate(to_config(EvaluateConfig, cfg))
    except (ValueError, FileNotFoundError) as err:  # bad input: one line, no traceback
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _evaluate(cfg: EvaluateConfig) -> None:
    if cfg.tune_allocator:
        tune_allocator()
    path = Path(hydra.utils.to_absolute_path(cfg.mechanism))
    ama = load_mechanism(path)
    setting = ama.setting
    evaluation = evaluate(ama, profiles=cfg.profiles, seed=cfg.seed)
    audit_types = setting.checked_sample(cfg.audit_profiles, torch.Generator().manual_seed(cfg.seed + 1))
    audit = ic_audit(ama, audit_types, seed=cfg.seed + 2)
    result = RunResult.of(setting, evaluation, audit=audit, mechanism=str(path))
    out = Path(hydra.utils.to_absolute_path(cfg.out)) if cfg.out else (path if path.is_dir() else path.parent) / "evaluation.json"
    write_result(out, result)
    ev = result.evaluation
    print(f"{result.setting} ({', '.join(f'{k}={v}' for k, v in result.env.items() if k != '_target_')})")
    print(f"{ev.objective} ({'higher' if result.maximize else 'lower'} is better) on {ev.profiles} profiles, seed {ev.seed}:")
    print(f"  mechanism  {ev.mean:.4f} +- {ev.stderr:.4f}")
    print(f"  VCG        {ev.vcg_mean:.4f} +- {ev.vcg_stderr:.4f}")
    if ev.known_optimum is not None:
        ratio = "n/a" if ev.optimality_ratio is None else f"{ev.optimality_ratio:.4f}"
        print(f"  optimum    {ev.known_optimum:.4f} (ratio {ratio})")
    print(f"  IC audit   max gain from lying {audit.max_ic_gain:.2e} over {audit.misreports} misreports; "
          f"min truthful utility {audit.min_truthful_utility:.4f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
