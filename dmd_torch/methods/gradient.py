"""The stochastic-gradient loop shared by the zeroth-order and regularized-LP methods (Algorithm 1).

Each step samples a mini-batch of type profiles, asks the method for a gradient estimate of the
expected loss (``-revenue`` or the makespan; paper, equation 1) with respect to the parameters the
setting optimizes, and takes a ``torch.optim`` step (with an optional ``lr_scheduler``). Every
``eval_every`` steps the mechanism is evaluated exactly (unregularized inner problem, paper section 5)
on a fixed held-out sample, and the best parameters so far are kept; the run reports the best. With
several starts (:class:`~dmd_torch.methods.multistart.MultiStart`) the loop runs from each, and the
start with the best held-out score wins (Algorithm 1, line 8).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from dmd_torch.mechanism import AMA
from dmd_torch.checks import check_choice, check_int
from dmd_torch.methods.base import (
    INITS,
    Callback,
    Method,
    MethodResult,
    OptimizerSpec,
    SchedulerSpec,
    StepEvent,
    as_spec,
    exact_score,
    free_parameters,
    restore,
    snapshot,
    stream_seed,
)
from dmd_torch.methods.multistart import MultiStart

__all__ = ["GradientMethod"]


@dataclass
class GradientMethod(Method):
    """Stochastic gradient descent on the leader's loss with held-out model selection.

    Attributes:
        steps: Gradient steps per start.
        profiles_per_step: Type profiles per stochastic gradient (paper: 20).
        eval_every: Exact held-out evaluation every this many steps (and at the start and end).
        init: Initial mechanism without a grid: ``uniform`` (``w = 1``, ``b ~ U[0, 1]``) or ``vcg``.
        optimizer: A :class:`OptimizerSpec` (or a mapping with ``name``, ``lr``, ``kwargs``).
        scheduler: A :class:`SchedulerSpec` (or a mapping with ``name``, ``kwargs``).
        multistart: A :class:`MultiStart` (or a mapping with ``starts``, ``grid_points``, ``grid_profiles``).
    """

    steps: int = 1000
    profiles_per_step: int = 20
    eval_every: int = 50
    init: str = "uniform"
    optimizer: Any = field(default_factory=OptimizerSpec)
    scheduler: Any = field(default_factory=SchedulerSpec)
    multistart: Any = field(default_factory=MultiStart)

    def __post_init__(self) -> None:
        check_int("steps", self.steps, minimum=0)
        check_int("profiles_per_step", self.profiles_per_step)
        check_int("eval_every", self.eval_every)
        check_choice("init", self.init, INITS)
        self.optimizer = as_spec(OptimizerSpec, self.optimizer)
        self.scheduler = as_spec(SchedulerSpec, self.scheduler)
        self.multistart = as_spec(MultiStart, self.multistart)

    # ------------------------------------------------------------------ what a method provides
    @abstractmethod
    def gradient(self, ama: AMA, types: torch.Tensor, generator: torch.Generator) -> float:
        """Sets ``.grad`` of the free parameters to an estimate of the LOSS gradient on ``types``.

        The loss is ``-revenue`` (revenue settings) or the setting's loss (e.g. makespan).

        Args:
            ama: The mechanism.
            types: The step's profiles ``[P, n, K]``.
            generator: Random generator for the method's own noise (e.g. perturbations).

        Returns:
            The training estimate of the objective (revenue or loss) on ``types``.
        """

    def begin_step(self, t: int) -> None:
        """Called before gradient step ``t`` (``1..steps``) of every start; a method with a schedule
        of its own (e.g. the regularized LP's annealed ``alpha``) updates it here. Default: nothing."""

    # ------------------------------------------------------------------ the loop
    def total_work(self) -> int:
        return self.multistart.total_work() + self.multistart.starts * self.steps

    def hparams(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.name,
            "steps": self.steps,
            "profiles_per_step": self.profiles_per_step,
            "eval_every": self.eval_every,
            "init": self.init,
            "optimizer": self.optimizer.name,
            "lr": self.optimizer.lr,
            "scheduler": self.scheduler.name or "none",
            "starts": self.multistart.starts,
            "grid_points": self.multistart.grid_points,
        }
        out.update({f"optimizer.{k}": v for k, v in self.optimizer.kwargs.items() if isinstance(v, (int, float, str, bool))})
        return out

    def run(
        self,
        ama: AMA,
        *,
        heldout: torch.Tensor,
        seed: int = 0,
        callback: Callback | None = None,
    ) -> MethodResult:
        """Runs Algorithm 1: starts, gradient steps from each, the best start by held-out score."""
        setting = ama.setting
        self.check_setting(setting)
        sign = 1.0 if setting.maximize else -1.0
        starts = self.multistart.points(ama, self.init, heldout, seed, callback)
        train_gen = torch.Generator().manual_seed(stream_seed(seed, "train"))
        noise_gen = torch.Generator().manual_seed(stream_seed(seed, "noise"))
        history: list[dict[str, float]] = []
        best: tuple[float, int, tuple[torch.Tensor, torch.Tensor]] | None = None
        step = 0
        for k, point in enumerate(starts):
            restore(ama, point)
            params = free_parameters(ama)
            optimizer = self.optimizer.build(params)
            scheduler = self.scheduler.build(optimizer, self.steps)
            for t in range(self.steps + 1):
                if t > 0:
                    types = setting.sample_types(self.profiles_per_step, train_gen).to(ama.boosts.device)
                    optimizer.zero_grad(set_to_none=False)
                    self.begin_step(t)
                    objective = self.gradient(ama, types, noise_gen)
                    grad_norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None))
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                    step += 1
                    if not all(bool(torch.isfinite(p).all()) for p in params):
                        raise FloatingPointError(
                            f"{self.name}: parameters became NaN or inf at step {t} of start {k}; lower the step size"
                        )
                    if callback is not None:
                        callback(StepEvent("train", step, k, 1, ama, objective=objective, grad_norm=grad_norm))
                if t % self.eval_every == 0 or t == self.steps:
                    held = exact_score(ama, heldout)
                    history.append({"step": step, "start": k, "heldout": held})
                    if best is None or sign * held > sign * best[0]:
                        best = (held, k, snapshot(ama))
                    if callback is not None:
                        callback(StepEvent("eval", step, k, 0, ama, heldout=held, best=best[0]))
        assert best is not None
        restore(ama, best[2])
        return MethodResult(
            ama=ama,
            heldout=best[0],
            steps=step,
            candidates=self.multistart.grid_points,
            best_start=best[1],
            history=history,
        )
