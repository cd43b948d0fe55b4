"""The leader's objective (paper, equation 1) and the payments of Definition 3.1: one computation.

The leader chooses ``theta = (log w, b)`` to optimize ``E_r[L(pi*(theta, r), theta)]``. A
:class:`LeaderObjective` says what ``L`` is, in which direction it is optimized and which of the
follower's problems it needs; the setting owns one (``Setting.objective``). :func:`leader_objective`
is the one batched computation of it: for ``C`` parameter vectors and ``P`` type profiles, with the
exact follower (evaluation, grid search), the regularized one (the paper's first-order method) or
any other :class:`~dmd_torch.follower.Follower` (zeroth order). Where the follower has a fused form of
the revenue (:meth:`~dmd_torch.follower.Follower.revenue`: the regularized follower on a history tree)
the revenue comes from it, with the same value and gradient in fewer operations.

* :class:`Revenue`: ``sum_i p_i`` with the payments of Definition 3.1 (:func:`payments`), maximized;
  needs the ``n`` problems without each agent.
* :class:`Loss`: a loss ``<q, nu>`` linear in the occupancy (``Setting.loss_vector``), minimized, e.g.
  the makespan; needs the full problem only, and reads a deterministic policy's loss off its path
  where the setting has that cheaper form (``Setting.policy_loss``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import torch

from dmd_torch.checks import all_finite
from dmd_torch.follower import EXACT, Follower, FollowerSolution

if TYPE_CHECKING:
    from dmd_torch.envs.base import Setting

__all__ = ["payments", "LeaderObjective", "Revenue", "Loss", "REVENUE", "leader_objective"]


def payments(values: torch.Tensor, weights: torch.Tensor, asw: torch.Tensor, asw_without: torch.Tensor) -> torch.Tensor:
    """``p_i = (asw^(-i) - (asw - w_i V_i)) / w_i`` (Definition 3.1), broadcast over leading dimensions.

    Summed over the agents this is the revenue ``sw + sum_i (asw^(-i) - asw) / w_i``, ``sw = sum_i V_i``.

    Args:
        values: Each agent's value ``V_i = <r_i, nu*>`` ``[..., n]``.
        weights: ``w`` ``[..., n]``.
        asw: Optimal affine welfare ``[...]``.
        asw_without: Optimal affine welfare without each agent ``[..., n]``.
    """
    return (asw_without - (asw.unsqueeze(-1) - weights * values)) / weights


class LeaderObjective(ABC):
    """What the leader optimizes, and what it needs of the follower.

    Attributes:
        name: The objective's name (``revenue``, ``makespan``, ...), as results record it.
        sign: ``+1`` if it is maximized, ``-1`` if minimized: ``sign * value`` is better higher.
        needs_without: Whether it needs the ``n`` problems without each agent (the payments).
        better: ``"higher"`` or ``"lower"``, for messages.
    """

    name: str
    sign: ClassVar[float]
    needs_without: ClassVar[bool]
    better: ClassVar[str]

    @property
    def maximize(self) -> bool:
        """True when higher is better."""
        return self.sign > 0

    @abstractmethod
    def value(self, setting: Setting, types: torch.Tensor, r: torch.Tensor, solution: FollowerSolution) -> torch.Tensor:
        """The objective of each parameter vector and profile ``[..., P]`` from the follower's solution."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Revenue(LeaderObjective):
    """The seller's revenue ``sum_i p_i`` (Definition 3.1), maximized."""

    name = "revenue"
    sign = 1.0
    needs_without = True
    better = "higher"

    def value(self, setting: Setting, types: torch.Tensor, r: torch.Tensor, solution: FollowerSolution) -> torch.Tensor:
        assert solution.asw_without is not None
        return payments(solution.agent_values, solution.weights, solution.asw, solution.asw_without).sum(-1)


class Loss(LeaderObjective):
    """A loss ``<q, nu>`` linear in the occupancy (``Setting.loss_vector``), minimized.

    Args:
        name: Its name, e.g. ``makespan``.
    """

    sign = -1.0
    needs_without = False
    better = "lower"

    def __init__(self, name: str) -> None:
        self.name = name

    def value(self, setting: Setting, types: torch.Tensor, r: torch.Tensor, solution: FollowerSolution) -> torch.Tensor:
        return setting.policy_loss(types, solution.occupancy)


#: The revenue objective (the default of a setting).
REVENUE = Revenue()


def leader_objective(
    setting: Setting,
    log_weights: torch.Tensor,
    boosts: torch.Tensor,
    types: torch.Tensor,
    follower: Follower = EXACT,
    r: torch.Tensor | None = None,
) -> torch.Tensor:
    """The leader's objective of ``C`` parameter vectors on ``P`` profiles in one batched solve, ``[..., P]``.

    Args:
        setting: The setting (its MDP, rewards and objective).
        log_weights: ``log w`` ``[..., n]``; leading dimensions (e.g. ``C`` candidates) broadcast.
        boosts: ``b`` ``[..., S, A]``.
        types: Type profiles ``[P, n, K]``.
        follower: The follower's response (default exact; differentiable ones give gradients).
        r: ``setting.checked_rewards(types)`` if already computed.

    Raises:
        ValueError: If the setting's rewards or objective come out malformed, NaN or inf.
    """
    r = setting.checked_rewards(types) if r is None else r
    objective = setting.objective
    # the revenue itself (not a subclass, which may change its value) in one fused step where the follower has one
    value = follower.revenue(setting.mdp, r, log_weights, boosts) if type(objective) is Revenue else None
    if value is None:
        solution = follower.respond(setting.mdp, r, log_weights, boosts, objective.needs_without)
        value = objective.value(setting, types, r, solution)
    if not all_finite(value):
        raise ValueError(f"setting {setting.name!r} produced a NaN or inf {objective.name}")
    return value
