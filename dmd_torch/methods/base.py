"""The interface shared by the outer optimization methods (paper, section 4 and Algorithm 1).

The leader's problem (paper, equation 1) is ``min_{w, b} E_r[L(pi*(w, b, r), w, b)]``; every method
moves the parameters ``theta = (log w, b)`` of one :class:`~dmd_torch.mechanism.AMA` module. A
:class:`Method` exposes :meth:`Method.check_setting` (raises a one-line ``ValueError`` before any work
when a setting does not suit it) and :meth:`Method.run`, which optimizes the module in place, reports
progress through a :data:`Callback` and returns a :class:`MethodResult`.

This module also holds what the methods share: the held-out score (exact inner solve, paper,
section 5), the initial mechanism of the gradient methods (spec: ``w = 1``, ``b ~ U[0, 1]``), the
batched affine rewards of several candidate parameter vectors at once, parameter snapshots, and the
validation of optimizer and learning-rate-schedule specifications (``torch.optim`` class names).
"""

from __future__ import annotations

import inspect
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from dmd_torch.checks import check_choice, check_float
from dmd_torch.envs.base import Setting
from dmd_torch.evaluation import objective_values
from dmd_torch.mechanism import AMA

__all__ = [
    "Method",
    "MethodResult",
    "StepEvent",
    "Callback",
    "OptimizerSpec",
    "SchedulerSpec",
    "as_spec",
    "INITS",
    "initial_mechanism",
    "free_parameters",
    "snapshot",
    "restore",
    "exact_score",
    "stream_seed",
]

#: Initial mechanisms of the gradient methods: ``uniform`` is the spec's ``w = 1, b ~ U[0, 1]``.
INITS = ("uniform", "vcg")


def stream_seed(seed: int, stream: str) -> int:
    """A seed for the named random stream of a run (distinct streams never share profiles).

    Streams are offset far from small integers, so training profiles never coincide with the
    evaluation profiles of :func:`dmd_torch.evaluation.evaluate` (which seeds with ``seed`` itself).
    """
    return (int(seed) * 1_000_003 + zlib.crc32(stream.encode()) + 2**33) % 2**62


# --------------------------------------------------------------------------- optimizer specs
_OPTIMIZERS = tuple(
    sorted(
        name
        for name in dir(torch.optim)
        if isinstance(getattr(torch.optim, name), type)
        and issubclass(getattr(torch.optim, name), torch.optim.Optimizer)
        and name != "Optimizer"
    )
)
_SCHEDULERS = tuple(
    sorted(
        name
        for name in dir(torch.optim.lr_scheduler)
        if isinstance(getattr(torch.optim.lr_scheduler, name), type)
        and issubclass(getattr(torch.optim.lr_scheduler, name), torch.optim.lr_scheduler.LRScheduler)
        and name not in ("LRScheduler", "_LRScheduler", "ReduceLROnPlateau", "ChainedScheduler", "SequentialLR")
    )
)


@dataclass
class OptimizerSpec:
    """A ``torch.optim`` optimizer by class name.

    Attributes:
        name: Class name in :mod:`torch.optim` (``SGD``, ``Adam``, ...).
        lr: Step size ``> 0``.
        kwargs: Further constructor arguments (e.g. ``momentum``, ``betas``).
    """

    name: str = "SGD"
    lr: float = 0.01
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("optimizer", self.name, _OPTIMIZERS)
        self.lr = check_float("optimizer lr (step size)", self.lr)
        self.kwargs = dict(self.kwargs or {})
        self.build([nn.Parameter(torch.zeros(1))])  # fails now, not after the first step

    def build(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The optimizer over ``params``."""
        try:
            return getattr(torch.optim, self.name)(params, lr=self.lr, **self.kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"bad arguments for optimizer {self.name} {self.kwargs}: {err}") from None


#: Schedule-length arguments that default to the number of steps per start.
_LENGTH_ARGS = ("T_max", "total_iters", "total_steps")


@dataclass
class SchedulerSpec:
    """An optional ``torch.optim.lr_scheduler`` schedule by class name, stepped once per step.

    A schedule-length argument the class takes (``T_max``, ``total_iters``, ``total_steps``) and
    ``kwargs`` does not set defaults to the number of steps per start.

    Attributes:
        name: Class name in :mod:`torch.optim.lr_scheduler` (``CosineAnnealingLR``, ``StepLR``,
            ...), or ``None`` for a constant step size.
        kwargs: Constructor arguments (e.g. ``step_size``, ``gamma``, ``eta_min``).
    """

    name: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kwargs = dict(self.kwargs or {})
        if self.name is not None:
            check_choice("lr scheduler", self.name, _SCHEDULERS)
            self.build(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), steps=10)

    def build(self, optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The schedule attached to ``optimizer`` for a run of ``steps`` steps (``None``: constant)."""
        if self.name is None:
            return None
        cls = getattr(torch.optim.lr_scheduler, self.name)
        params = inspect.signature(cls).parameters
        kwargs = {k: max(1, steps) for k in _LENGTH_ARGS if k in params and k not in self.kwargs}
        kwargs.update(self.kwargs)
        try:
            return cls(optimizer, **kwargs)
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"bad arguments for lr scheduler {self.name} {self.kwargs}: {err}") from None


def as_spec(cls: type, value: Any) -> Any:
    """Turns a mapping (e.g. a config block) into ``cls``; passes instances and ``None`` through."""
    if value is None or isinstance(value, cls):
        return cls() if value is None else value
    if isinstance(value, Mapping):
        allowed = tuple(cls.__dataclass_fields__)
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)} for {cls.__name__}; allowed: {', '.join(allowed)}")
        return cls(**dict(value))
    raise ValueError(f"{cls.__name__} must be a mapping, got {value!r}")


# --------------------------------------------------------------------------- progress reports
@dataclass
class StepEvent:
    """One progress report of a method to its callback.

    Attributes:
        phase: ``"grid"`` (a batch of grid candidates scored; the last report of a grid search
            carries the held-out score of its best candidate), ``"train"`` (one gradient step) or
            ``"eval"`` (an exact held-out evaluation of the gradient method).
        step: Gradient steps done so far over all starts (``phase != "grid"``), or grid candidates
            scored so far.
        start: Index of the multi-start run (0 without multi-start).
        advance: Units of work done since the previous report (for progress bars).
        objective: Training estimate of the objective (a step's mini-batch, or the best grid score).
        grad_norm: Euclidean norm of the gradient estimate (``phase == "train"``).
        heldout: Exact mean objective on the held-out sample (``"eval"``, and the grid's last report).
        best: Best held-out objective so far (in objective units: higher revenue, lower loss).
        ama: The mechanism being optimized (read its parameters; do not modify them).
    """

    phase: str
    step: int
    start: int
    advance: int
    ama: AMA
    objective: float | None = None
    grad_norm: float | None = None
    heldout: float | None = None
    best: float | None = None


#: A callback receives every :class:`StepEvent` of a run.
Callback = Callable[[StepEvent], None]


@dataclass
class MethodResult:
    """What :meth:`Method.run` returns; the mechanism passed in holds the best parameters.

    Attributes:
        ama: The optimized mechanism (the module passed to ``run``, set to the best parameters).
        heldout: Exact mean objective of the best parameters on the held-out sample.
        steps: Gradient steps taken (over all starts).
        candidates: Grid candidates scored.
        best_start: Index of the start that won (multi-start), else 0.
        history: Held-out evaluations ``{"step", "start", "heldout"}`` in order.
        top: For grid search, the best candidates ``(score, log_weights, boosts)``, best first.
    """

    ama: AMA
    heldout: float
    steps: int = 0
    candidates: int = 0
    best_start: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    top: list[tuple[float, torch.Tensor, torch.Tensor]] = field(default_factory=list)


class Method(ABC):
    """An outer optimization method over the parameters of an :class:`AMA`."""

    #: Registry name (``grid``, ``zeroth_order``, ``reg_lp``).
    name: ClassVar[str]

    def check_setting(self, setting: Setting) -> None:
        """Raises a one-line ``ValueError`` if the method cannot run on ``setting``."""
        if not (setting.optimize_weights or setting.optimize_boosts):
            raise ValueError(f"setting {setting.name!r} optimizes neither weights nor boosts: nothing to optimize")

    @abstractmethod
    def total_work(self) -> int:
        """Units of work of a run (the sum of the ``advance`` fields of its events)."""

    @abstractmethod
    def run(
        self,
        ama: AMA,
        *,
        heldout: torch.Tensor,
        seed: int = 0,
        callback: Callback | None = None,
    ) -> MethodResult:
        """Optimizes ``ama`` in place and returns the result.

        Args:
            ama: The mechanism; its parameters with ``requires_grad`` are optimized, the rest stay.
            heldout: Fixed held-out type profiles ``[H, n, K]`` for exact evaluation (best-so-far).
            seed: Seed of the method's random streams (training profiles, perturbations, Sobol).
            callback: Receives a :class:`StepEvent` after each unit of progress.
        """

    def hparams(self) -> dict[str, Any]:
        """Flat hyperparameters for logging."""
        return {"method": self.name}


# --------------------------------------------------------------------------- shared helpers
def initial_mechanism(ama: AMA, init: str, generator: torch.Generator) -> None:
    """Sets the free parameters of ``ama`` to the initial mechanism of the gradient methods.

    ``uniform`` (spec): ``w = 1``, ``b ~ U[0, 1]`` elementwise; ``vcg``: ``w = 1``, ``b = 0``.
    Parameters the setting does not optimize are left as they are.
    """
    check_choice("init", init, INITS)
    with torch.no_grad():
        if ama.log_weights.requires_grad:
            ama.log_weights.zero_()
        if ama.boosts.requires_grad:
            if init == "uniform":
                u = torch.rand(ama.boosts.shape, generator=generator, dtype=torch.float64)
                ama.boosts.copy_(u.to(ama.boosts))
            else:
                ama.boosts.zero_()


def free_parameters(ama: AMA) -> list[nn.Parameter]:
    """The parameters the setting optimizes (those with ``requires_grad``), in a fixed order."""
    return [p for p in (ama.log_weights, ama.boosts) if p.requires_grad]


def snapshot(ama: AMA) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached copies of ``(log_weights, boosts)``."""
    return ama.log_weights.detach().clone(), ama.boosts.detach().clone()


def restore(ama: AMA, state: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Writes a :func:`snapshot` back into ``ama``."""
    with torch.no_grad():
        ama.log_weights.copy_(state[0])
        ama.boosts.copy_(state[1])


def exact_score(ama: AMA, types: torch.Tensor) -> float:
    """Exact (unregularized) mean objective of ``ama`` on ``types`` (paper, section 5)."""
    return float(objective_values(ama, types).mean())
