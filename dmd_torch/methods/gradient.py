"""The stochastic-gradient method of the paper's Algorithm 1, with a pluggable gradient estimator.

Each step samples a mini-batch of type profiles, asks the :class:`GradientEstimator` for a
differentiable objective whose gradient estimates that of the expected objective (paper,
equation 1), and takes a ``torch.optim`` step on ``-sign * objective`` after ``loss.backward()``
(with an optional ``lr_scheduler``). Two estimators: the regularized follower's exact gradient
(:mod:`dmd_torch.methods.reg_lp`) and the zeroth-order bilevel estimate
(:mod:`dmd_torch.methods.zeroth_order`). Every ``eval_every`` steps the mechanism is evaluated
exactly (unregularized inner problem, paper section 5) on a fixed held-out sample, and the best
parameters so far are kept; with several starts (:class:`~dmd_torch.methods.multistart.MultiStart`)
the start with the best held-out score wins (Algorithm 1, line 8); with ``keep_vcg`` VCG's held-out
score is the bar a trained point must beat, else VCG is returned. With ``tied`` (by default where
the setting knows an optimum there: :attr:`~dmd_torch.envs.Setting.boosts_by_height`), every start
and every gradient is projected onto the boosts shared by height (one per (height, action),
:func:`~dmd_torch.methods.base.tie_to_heights`), so the steps search that family only.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

from dmd_torch.checks import all_finite
from dmd_torch.config import GradientConfig
from dmd_torch.envs.base import Setting
from dmd_torch.mechanism import AMA
from dmd_torch.methods.base import (
    Callback,
    Method,
    MethodResult,
    StepEvent,
    exact_score,
    free_parameters,
    height_groups,
    initial_mechanism,
    restore,
    snapshot,
    stream_seed,
    tie_to_heights,
)
from dmd_torch.methods.multistart import MultiStart

__all__ = ["GradientEstimator", "GradientMethod"]


class GradientEstimator(ABC):
    """A differentiable estimate of the leader's objective on a mini-batch, for ``backward()``.

    Args:
        config: The gradient method's configuration (the estimator reads its own keys).
    """

    def __init__(self, config: GradientConfig) -> None:
        self.config = config

    def check_setting(self, setting: Setting) -> None:
        """Raises a one-line ``ValueError`` if the estimator cannot run on ``setting`` (default: it can)."""

    @abstractmethod
    def objective(self, ama: AMA, types: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
        """Per-profile objective ``[P]`` whose gradient in the free parameters estimates the objective's.

        Args:
            ama: The mechanism.
            types: The step's profiles ``[P, n, K]``.
            step: The step within its start, ``1..steps`` (for schedules of the estimator's own).
            generator: Random generator for the estimator's own noise (e.g. perturbations).
        """


class GradientMethod(Method):
    """Stochastic gradient steps on the leader's objective with held-out model selection.

    Subclasses set :attr:`Config` and :attr:`Estimator`, which is built from the configuration.
    """

    Config = GradientConfig
    #: The gradient estimator's class; it takes the method's configuration.
    Estimator: type[GradientEstimator]

    def __init__(self, config: GradientConfig | None = None, **overrides: object) -> None:
        super().__init__(config, **overrides)
        self.estimator = self.Estimator(self.config)

    def check_setting(self, setting: Setting) -> None:
        super().check_setting(setting)
        if setting.mdp.heights is None:
            if self.config.tied:
                raise ValueError(f"{self.name} tied=true needs an acyclic MDP (boosts shared by height); "
                                 f"{setting.name} has cycles; allowed: tied=false or null")
            if self.config.tied is None and setting.boosts_by_height:
                raise ValueError(f"setting {setting.name!r} declares boosts_by_height, but its MDP has cycles "
                                 "(no heights); allowed: boosts_by_height = False, or tied=false")
        self.estimator.check_setting(setting)
        grid = MultiStart(self.config.multistart).grid
        if grid is not None:
            grid.check_setting(setting)

    def tied_groups(self, ama: AMA) -> torch.Tensor | None:
        """The (height, action) groups the boosts are tied to (:func:`height_groups`), or ``None``:
        ``tied``, or where it is ``None`` the setting's ``boosts_by_height``, with free boosts."""
        tied = self.config.tied if self.config.tied is not None else ama.setting.boosts_by_height
        return height_groups(ama.setting) if tied and ama.boosts.requires_grad else None

    def total_work(self) -> int:
        return self.config.multistart.grid_points + self.config.multistart.starts * self.config.steps

    def run(
        self,
        ama: AMA,
        *,
        heldout: torch.Tensor,
        seed: int = 0,
        callback: Callback | None = None,
    ) -> MethodResult:
        """Runs Algorithm 1: starts, gradient steps from each, the best start by held-out score."""
        cfg = self.config
        setting = ama.setting
        self.check_setting(setting)
        sign = setting.objective.sign
        starts = MultiStart(cfg.multistart).points(ama, cfg.init, heldout, seed, callback)
        groups = self.tied_groups(ama)
        if groups is not None:  # every start on the tied boosts; each gradient is projected onto them
            starts = [(lw, tie_to_heights(b, groups)) for lw, b in starts]
        train_gen = torch.Generator().manual_seed(stream_seed(seed, "train"))
        noise_gen = torch.Generator().manual_seed(stream_seed(seed, "noise"))
        history: list[dict[str, float]] = []
        best: tuple[float, int, tuple[torch.Tensor, torch.Tensor]] | None = None
        step = 0
        if cfg.keep_vcg:  # VCG, scored as a candidate (start -1) that is not trained
            initial_mechanism(ama, "vcg", torch.Generator())
            held = exact_score(ama, heldout)
            history.append({"step": 0, "start": -1, "heldout": held})
            best = (held, -1, snapshot(ama))

        def evaluate(k: int) -> None:
            nonlocal best
            held = exact_score(ama, heldout)
            history.append({"step": step, "start": k, "heldout": held})
            if best is None or sign * held > sign * best[0]:
                best = (held, k, snapshot(ama))
            if callback is not None:
                callback(StepEvent("eval", step, k, 0, ama, heldout=held, best=best[0]))

        for k, point in enumerate(starts):
            restore(ama, point)
            params = free_parameters(ama)
            optimizer = cfg.optimizer.build(params)
            scheduler = cfg.scheduler.build(optimizer, cfg.steps)
            evaluate(k)
            for t in range(1, cfg.steps + 1):
                types = setting.checked_sample(cfg.profiles_per_step, train_gen).to(ama.boosts.device)
                optimizer.zero_grad(set_to_none=False)
                objective = self.estimator.objective(ama, types, t, noise_gen).mean()
                (-sign * objective).backward()
                if groups is not None and ama.boosts.grad is not None:
                    ama.boosts.grad.copy_(tie_to_heights(ama.boosts.grad, groups))
                # the gradient's norm, for the callback only
                squares = [p.grad.pow(2).sum() for p in params if p.grad is not None] if callback is not None else []
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                step += 1
                # one read-back for the squares and each new parameter's sum: a finite sum has finite
                # entries (NaN and inf propagate); one that is not is settled by all_finite
                read = torch.stack([*squares, *(p.detach().sum() for p in params)]).tolist()
                grad_norm = math.sqrt(sum(read[: len(squares)]))
                if not all(math.isfinite(v) for v in read[len(squares) :]) and not all(all_finite(p) for p in params):
                    raise FloatingPointError(
                        f"{self.name}: parameters became NaN or inf at step {t} of start {k}; lower the step size"
                    )
                if callback is not None:
                    callback(StepEvent("train", step, k, 1, ama, objective=float(objective.detach()), grad_norm=grad_norm))
                if t % cfg.eval_every == 0 or t == cfg.steps:
                    evaluate(k)
        assert best is not None
        restore(ama, best[2])
        return MethodResult(
            ama=ama,
            heldout=best[0],
            steps=step,
            candidates=cfg.multistart.grid_points,
            starts=cfg.multistart.starts,
            best_start=best[1],
            history=history,
        )
