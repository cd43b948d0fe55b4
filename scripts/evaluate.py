"""Evaluate a saved mechanism: ``python scripts/evaluate.py mechanism=PATH [profiles=10000] [seed=0] [out=PATH]``."""

from __future__ import annotations

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from dmd_torch.app import evaluate_saved
from dmd_torch.config import EvaluateConfig, register_configs, to_config
from dmd_torch.evaluation import NOT_SOUND

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        config = to_config(EvaluateConfig, cfg)
        config.mechanism = to_absolute_path(config.mechanism)
        config.out = None if config.out is None else to_absolute_path(config.out)
        result, out = evaluate_saved(config)
    except (ValueError, FileNotFoundError) as err:  # bad input: one line, no traceback
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    ev, audit = result.evaluation, result.audit
    assert audit is not None
    print(f"{result.setting} ({', '.join(f'{k}={v}' for k, v in result.env.items() if k != '_target_')})")
    print(f"{ev.objective} ({'higher' if result.maximize else 'lower'} is better) on {ev.profiles} profiles, seed {ev.seed}:")
    print(f"  mechanism  {ev.mean:.4f} +- {ev.stderr:.4f}")
    print(f"  VCG        {ev.vcg_mean:.4f} +- {ev.vcg_stderr:.4f}")
    if ev.known_optimum is not None:
        ratio = "n/a" if ev.optimality_ratio is None else f"{ev.optimality_ratio:.4f}"
        print(f"  optimum    {ev.known_optimum:.4f} (ratio {ratio})")
    if not ev.numerically_sound:
        print(f"  WARNING: {NOT_SOUND} {ev.ic_tolerance:.1e} of the rewards")
    print(f"  IC audit   max gain from lying {audit.max_ic_gain:.2e} over {audit.misreports} misreports; "
          f"min truthful utility {audit.min_truthful_utility:.4f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
