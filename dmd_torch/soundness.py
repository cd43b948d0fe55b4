"""Numerical soundness: how far float64 arithmetic can bend the incentives of an AMA.

An AMA is strategyproof in exact arithmetic for every ``w > 0`` and ``b``. The exact solvers compare
Q-values up to the tie tolerance ``TIE_TOL * (1 + |Q|)`` (:mod:`dmd_torch.exact`), and the payments
are differences of affine welfares of size ``|Q|``. Where the boosts or weighted rewards are large,
``|Q|`` is large, and an agent can shift a near-tie, or a rounded payment, by up to

    ic_tolerance = (TIE_TOL + 64 eps) * (1 + Q) / min_i w_i,     Q = H * (max |b| + sum_i w_i R_i),

in its own utility, where ``H`` is the horizon (the number of decisions, or ``1 / (1 - gamma)``) and
``R_i`` the largest reward agent ``i`` can have (:meth:`~dmd_torch.envs.Setting.reward_scale`). The
library compares it with the agents' reward scale ``R = max_i R_i`` (docs/numerical_soundness.md):

* ``ic_tolerance <= SOUND * R``: sound; figures are reported as they are;
* ``SOUND * R < ic_tolerance <= REFUSE * R``: flagged; evaluation warns, and ``results.json``, the
  printed summaries and the report mark the figures as strategyproof only up to the tolerance;
* ``ic_tolerance > REFUSE * R``: refused; the mechanism's figures would be meaningless, and
  :meth:`~dmd_torch.mechanism.AMA.check_parameters` raises before any solve.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from dmd_torch.exact import TIE_TOL
from dmd_torch.mdp import TabularMDP

if TYPE_CHECKING:
    from dmd_torch.envs.base import Setting

__all__ = ["SOUND", "REFUSE", "horizon", "ic_tolerance", "check_sound"]

SOUND = 1e-8
"""Relative IC tolerance up to which figures are reported unflagged."""
REFUSE = 1e-3
"""Relative IC tolerance above which a mechanism is refused."""
_EPS = float(torch.finfo(torch.float64).eps)


def horizon(mdp: TabularMDP) -> float:
    """An upper bound on the total discounted weight of a trajectory: the number of decisions on an
    acyclic MDP, ``1 / (1 - gamma)`` on one with cycles."""
    return float(len(mdp.levels)) if mdp.levels is not None else 1.0 / (1.0 - mdp.gamma)


def _bounds(setting: Setting, log_weights: torch.Tensor, boosts: torch.Tensor) -> list[float]:
    """``max |log w|``, ``max |b|``, ``sum_i w_i R_i``, ``min_i w_i`` and ``R = max_i R_i``, in float64,
    with one read-back (this runs before every training step)."""
    lw = log_weights.detach().to(torch.float64)
    R = setting.reward_scale().to(lw)
    top = boosts.detach().abs().amax().to(lw)
    return torch.stack([lw.abs().amax(), top, (lw.exp() * R).sum(), lw.amin().exp(), R.amax()]).tolist()


def _tolerance(setting: Setting, top: float, load: float, smallest: float) -> float:
    """The bound from ``max |b|``, ``sum_i w_i R_i`` and ``min_i w_i``."""
    Q = horizon(setting.mdp) * (top + load)
    return (TIE_TOL + 64 * _EPS) * (1.0 + Q) / smallest


def ic_tolerance(setting: Setting, weights: torch.Tensor, boosts: torch.Tensor) -> float:
    """The bound of the module docstring on the utility an agent can gain from float64's rounding,
    for weights ``[n]`` and boosts ``[S, A]``."""
    return _tolerance(setting, *_bounds(setting, weights.detach().to(torch.float64).log(), boosts)[1:4])


def check_sound(setting: Setting, log_weights: torch.Tensor, boosts: torch.Tensor) -> float:
    """The relative IC tolerance ``ic_tolerance / R`` of ``w = exp(log_weights)`` and ``boosts``.

    Raises a one-line ``ValueError`` if a parameter holds NaN or inf, or if the tolerance is above
    :data:`REFUSE`. One reduction serves both checks (it runs before every training step).
    """
    stats = _bounds(setting, log_weights, boosts)
    for name, value in (("log_weights", stats[0]), ("boosts", stats[1])):
        if not math.isfinite(value):
            raise ValueError(f"mechanism parameter {name} contains NaN or inf")
    scale = stats[4]
    relative = _tolerance(setting, *stats[1:4]) / (scale if scale > 0 else 1.0)
    if relative > REFUSE:
        raise ValueError(
            f"the mechanism's boosts (largest {stats[1]:.3g}) or weights dwarf the "
            f"rewards (scale {scale:.3g}): float64 resolves its ties and payments only to {relative:.1e} of the "
            f"rewards, so it is not strategyproof in floating point; allowed: up to {REFUSE:g} (docs/numerical_soundness.md)"
        )
    return relative
