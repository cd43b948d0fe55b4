"""The interface shared by the outer optimization methods (paper, section 4 and Algorithm 1).

The leader's problem (paper, equation 1) is ``min_{w, b} E_r[L(pi*(w, b, r), w, b)]``; every method
moves the parameters ``theta = (log w, b)`` of one :class:`~dmd_torch.mechanism.AMA` module. A
:class:`Method` is built from its typed configuration (:mod:`dmd_torch.config`), exposes
:meth:`Method.check_setting` (a one-line ``ValueError`` before any work when a setting does not suit
it) and :meth:`Method.run`, which optimizes the module in place, reports progress through a
:data:`Callback` and returns a :class:`MethodResult`.

This module also holds what the methods share: the held-out score (exact inner solve, paper,
section 5), the initial mechanism of the gradient methods (``w = 1``, ``b ~ U[0, 1]``), parameter
snapshots and the seeds of a run's random streams.
"""

from __future__ import annotations

import dataclasses
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from dmd_torch.checks import check_choice
from dmd_torch.config import INITS, MethodConfig, to_config
from dmd_torch.envs.base import Setting
from dmd_torch.evaluation import objective_values
from dmd_torch.mechanism import AMA

__all__ = [
    "Method",
    "MethodResult",
    "StepEvent",
    "Callback",
    "initial_mechanism",
    "free_parameters",
    "snapshot",
    "restore",
    "exact_score",
    "stream_seed",
    "height_groups",
    "tie_to_heights",
]


def stream_seed(seed: int, stream: str) -> int:
    """A seed for the named random stream of a run (distinct streams never share profiles).

    Streams are offset far from small integers, so training profiles never coincide with the
    evaluation profiles of :func:`dmd_torch.evaluation.evaluate` (which seeds with ``seed`` itself).
    """
    return (int(seed) * 1_000_003 + zlib.crc32(stream.encode()) + 2**33) % 2**62


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
        starts: Starting points run (gradient methods; 1 for grid search).
        best_start: Index of the start that won (multi-start), else 0; ``-1``: VCG, which no trained
            point beat (the gradient methods' ``keep_vcg``).
        history: Held-out evaluations ``{"step", "start", "heldout"}`` in order (``start`` ``-1``: VCG).
        top: For grid search, the best candidates ``(score, log_weights, boosts)``, best first.
    """

    ama: AMA
    heldout: float
    steps: int = 0
    candidates: int = 0
    starts: int = 1
    best_start: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    top: list[tuple[float, torch.Tensor, torch.Tensor]] = field(default_factory=list)


class Method(ABC):
    """An outer optimization method over the parameters of an :class:`AMA`.

    Args:
        config: The method's configuration (default: :attr:`Config` with ``overrides``).
        **overrides: Configuration values over the defaults, e.g. ``steps=500`` or
            ``optimizer={"name": "SGD", "lr": 0.1}`` (type- and range-checked, one-line errors).
    """

    #: Registry name (``grid``, ``zeroth_order``, ``reg_lp``).
    name: ClassVar[str]
    #: The configuration dataclass.
    Config: ClassVar[type[MethodConfig]]

    def __init__(self, config: MethodConfig | None = None, **overrides: Any) -> None:
        if config is not None and overrides:
            raise ValueError("pass either a config or overrides, not both")
        self.config = to_config(self.Config, overrides) if config is None else config
        if not isinstance(self.config, self.Config):
            raise ValueError(f"{type(self).__name__} takes a {self.Config.__name__}, got {type(self.config).__name__}")

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
        """The configuration's scalars, flat with dotted keys (for TensorBoard's HParams)."""
        return _flat(dataclasses.asdict(self.config))


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif v is None or isinstance(v, (int, float, str, bool)):
            out[f"{prefix}{k}"] = "none" if v is None else v
    return out


# --------------------------------------------------------------------------- shared helpers
def initial_mechanism(ama: AMA, init: str, generator: torch.Generator) -> None:
    """Sets the free parameters of ``ama`` to the initial mechanism of the gradient methods.

    ``uniform`` (the paper's): ``w = 1``, ``b ~ U[0, 1]`` elementwise; ``vcg``: ``w = 1``, ``b = 0``.
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


def height_groups(setting: Setting) -> torch.Tensor | None:
    """The (height, action) group of each boost ``[S * A]`` (``height * A + action``) on an acyclic
    MDP, whose states as many steps from the end share a group; ``None`` on an MDP with cycles."""
    heights = setting.mdp.heights
    if heights is None:
        return None
    A = setting.mdp.num_actions
    return (heights.cpu().unsqueeze(-1) * A + torch.arange(A)).flatten()


def tie_to_heights(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``x[S, A]`` projected onto the boosts that depend only on (height, action): each entry
    replaced by the mean of its group (:func:`height_groups`)."""
    flat = x.flatten()
    idx = groups.to(flat.device)
    count = torch.bincount(idx)
    total = flat.new_zeros(count.numel()).index_add_(0, idx, flat)
    return (total / count)[idx].view_as(x)
