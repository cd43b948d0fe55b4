"""The follower's response to an AMA: the ``n + 1`` affine problems of a profile and their solutions.

Under parameters ``(log w, b)`` the follower (the mechanism's policy) maximizes the affine welfare
``asw = <sum_i w_i r_i + b, nu>`` over occupancy measures ``nu`` (paper, equation 2); the payments
(Definition 3.1) also need ``asw^(-i)``, the optimum with agent ``i``'s rewards dropped. A
:class:`Follower` solves these problems for a batch of profiles and, in one call, for a batch of
``C`` parameter vectors, and returns a :class:`FollowerSolution`:

* :class:`ExactFollower`: the LP exactly (backward induction or policy iteration,
  :mod:`dmd_torch.exact`); what evaluation uses, so mechanisms stay exactly strategyproof;
* :class:`RegularizedFollower`: the entropy-regularized problem (paper, section 4, equation 13),
  differentiable: ``nu`` through :func:`~dmd_torch.regularized.regularized_occupancy` and the affine
  welfare by the envelope theorem (paper, Appendix C), ``d asw_alpha / d c = nu_alpha``;
* the zeroth-order follower of :mod:`dmd_torch.methods.zeroth_order` (exact, with a smoothed
  gradient of the response).

The leader's objective (:mod:`dmd_torch.objective`) reads what it needs off the solution.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from dmd_torch.checks import all_finite, check_float
from dmd_torch.exact import PolicyOccupancy, mean_reward_policy, optimal_values, policy_occupancy, solve_exact
from dmd_torch.mdp import TabularMDP
from dmd_torch.regularized import Backend, TreeBackend, make_backend, regularized_occupancy, tree_revenue

__all__ = [
    "FollowerSolution",
    "Follower",
    "ExactFollower",
    "RegularizedFollower",
    "EXACT",
    "affine_total",
    "affine_problems",
    "affine_rewards",
    "certified_without",
    "welfare_without",
    "check_solved",
]


# ------------------------------------------------------------------------------------ the problems
def affine_total(r: torch.Tensor, weights: torch.Tensor, boosts: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i r_i + b`` for ``r[..., n, S, A]``, ``w[..., n]``, ``b[..., S, A]``, one fused
    multiply-add per agent (no ``[..., n, S, A]`` temporary; faster than a batched matrix product
    when ``S A`` is small). All arguments broadcast over leading dimensions."""
    w = weights.view(*weights.shape, 1, 1)
    total = torch.addcmul(boosts, w[..., 0, :, :], r[..., 0, :, :])
    for i in range(1, r.shape[-3]):
        total.addcmul_(w[..., i, :, :], r[..., i, :, :])
    return total


def affine_problems(
    r: torch.Tensor, weights: torch.Tensor, boosts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the full problem ``[..., S, A]`` and of the ``n`` problems without each agent
    ``[..., n, S, A]`` (index ``i``: agent ``i``'s term dropped, for ``asw^(-i)``); see :func:`affine_total`."""
    total = affine_total(r, weights, boosts)
    return total, torch.addcmul(total.unsqueeze(-3), weights.view(*weights.shape, 1, 1), r, value=-1.0)


def affine_rewards(
    r: torch.Tensor, weights: torch.Tensor, boosts: torch.Tensor, without: bool = True
) -> torch.Tensor:
    """The follower problems in one tensor: ``[..., n + 1, S, A]`` (index 0 the full problem, ``1 + i``
    without agent ``i``), or ``[..., S, A]`` (the full problem) when ``without`` is false."""
    if not without:
        return affine_total(r, weights, boosts)
    total, minus = affine_problems(r, weights, boosts)
    return torch.cat([total.unsqueeze(-3), minus], dim=-3)


def certified_without(mdp: TabularMDP, r: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Where :func:`welfare_without` takes ``asw^(-i) = asw`` without a solve, a boolean mask ``[..., n]``.

    Those are the agents with rewards ``r_i >= 0`` and value ``V_i = 0`` under the full problem's
    policy, on MDPs solved by policy iteration (on acyclic ones every problem is solved: nothing).

    Args:
        mdp: The MDP.
        r: Agent rewards ``[..., n, S, A]`` (leading dimensions broadcast against ``values``).
        values: Agents' values under the full problem's optimal policy ``[..., n]``.
    """
    if mdp.levels is not None:  # one backward sweep values all n problems, cheaper than picking some
        return torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    return (values == 0) & (r.flatten(-2).amin(-1) >= 0)  # a min: 8x faster than (r >= 0).all(-1)


def welfare_without(
    mdp: TabularMDP,
    r: torch.Tensor,
    minus: torch.Tensor,
    asw: torch.Tensor,
    values: torch.Tensor,
    init_policy: torch.Tensor | None = None,
    init_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """The optimal affine welfare without each agent, ``asw^(-i)``, exactly, ``[..., n]``.

    An agent whose rewards are non-negative and whose value ``V_i`` under the chosen policy is zero
    needs no solve: ``r_i = 0`` wherever that policy goes, so it earns ``asw`` without ``i`` too, and
    no reward grew by dropping ``w_i r_i >= 0``, so ``asw^(-i) = asw`` (e.g. the gridworld agents
    whose goal is never visited). The certificate is used on MDPs that policy iteration solves; on
    acyclic ones one backward sweep values all ``n`` problems (:func:`~dmd_torch.exact.optimal_values`).

    Args:
        mdp: The MDP.
        r: Agent rewards ``[..., n, S, A]`` (leading dimensions broadcast against ``values``).
        minus: Rewards of the problems without each agent ``[..., n, S, A]`` (:func:`affine_problems`).
        asw: Optimal affine welfare of the full problem ``[...]``.
        values: Agents' values ``V_i`` under the full problem's optimal policy ``[..., n]``.
        init_policy: Start of policy iteration (discounted MDPs), broadcastable to ``minus.shape[:-1]``.
        init_values: Start of its value-iteration sweeps instead (e.g. the full problem's state
            values, an upper bound where ``w_i r_i >= 0``), broadcastable to ``minus.shape[:-1]``.
    """
    skip = certified_without(mdp, r, values)
    if not bool(skip.any()):
        return optimal_values(mdp, minus, check_finite=False, init_policy=init_policy, init_values=init_values)
    out = asw.unsqueeze(-1).expand(values.shape).clone()
    solve = (~skip).flatten().nonzero().squeeze(-1)  # flat indices: index_select is faster than a mask
    if solve.numel():
        def rows(x: torch.Tensor, *tail: int) -> torch.Tensor:
            return x.expand(*values.shape, *tail).reshape(-1, *tail).index_select(0, solve)

        policy = None if init_policy is None else rows(init_policy, mdp.num_states)
        start = None if init_values is None else rows(init_values, mdp.num_states)
        problems = rows(minus, *mdp.shape)
        values_without = optimal_values(mdp, problems, check_finite=False, init_policy=policy, init_values=start)
        out.view(-1).index_copy_(0, solve, values_without)
    return out


def check_solved(*values: torch.Tensor) -> None:
    """Raises if optimal values are NaN or inf (NaN or inf rewards reach them through the solvers)."""
    if not all(all_finite(v) for v in values):
        raise ValueError("the follower's optimal values are NaN or inf: the setting produced NaN or inf rewards")


# ------------------------------------------------------------------------------------ solutions
@dataclass
class FollowerSolution:
    """The follower's response to ``C`` parameter vectors on ``P`` profiles (leading shape ``[..., P]``).

    Attributes:
        occupancy: Occupancy of the full problem's solution (a path or dense; differentiable in the
            parameters for the gradient followers).
        asw: Optimal affine welfare ``[..., P]`` (regularized: with the entropy term).
        asw_without: ``asw^(-i)`` ``[..., P, n]``, or ``None`` when not asked for.
        weights: ``w`` broadcast against the profiles, ``[..., 1, n]``.
        rewards: The agents' rewards ``r[P, n, S, A]``.
        policy: The deterministic optimal policy ``[..., P, S]`` (exact followers), else ``None``.
    """

    occupancy: PolicyOccupancy
    asw: torch.Tensor
    asw_without: torch.Tensor | None
    weights: torch.Tensor
    rewards: torch.Tensor
    policy: torch.Tensor | None = None
    values: torch.Tensor | None = field(default=None, repr=False)

    @property
    def agent_values(self) -> torch.Tensor:
        """``V_i = <r_i, nu>`` ``[..., P, n]`` (computed once, on first use)."""
        if self.values is None:
            self.values = self.occupancy.inner(self.rewards, extra=1)
        return self.values


class Follower(ABC):
    """How the follower responds: one batched solve of the affine problems (module docstring)."""

    @abstractmethod
    def respond(
        self, mdp: TabularMDP, r: torch.Tensor, log_weights: torch.Tensor, boosts: torch.Tensor, without: bool
    ) -> FollowerSolution:
        """Solves the full problem, and the ``n`` without each agent where ``without`` is true.

        Args:
            mdp: The MDP.
            r: Agent rewards ``[P, n, S, A]``.
            log_weights: ``log w`` ``[..., n]`` (``C`` parameter vectors in the leading dimensions, or none).
            boosts: ``b`` ``[..., S, A]``.
            without: Also solve the problems without each agent (``asw^(-i)``, needed for payments).
        """

    def revenue(
        self, mdp: TabularMDP, r: torch.Tensor, log_weights: torch.Tensor, boosts: torch.Tensor
    ) -> torch.Tensor | None:
        """The summed payments ``sum_i p_i`` ``[P]`` in one fused computation where this follower has
        one for these arguments, else ``None`` (default): then they are read off :meth:`respond`."""
        return None


def _broadcast(log_weights: torch.Tensor, boosts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w [..., 1, n]`` and ``b [..., 1, S, A]``: parameters broadcast against the profile dimension
    (one parameter vector, ``w [n]`` and ``b [S, A]``, broadcasts as it is)."""
    if log_weights.dim() == 1 and boosts.dim() == 2:
        return log_weights.exp(), boosts
    return log_weights.exp().unsqueeze(-2), boosts.unsqueeze(-3)


@dataclass(frozen=True)
class ExactFollower(Follower):
    """The exact follower (paper, equation 2).

    Attributes:
        candidate_start: On discounted MDPs, start policy iteration of the full problem from each
            parameter vector's mean-reward policy (:func:`~dmd_torch.exact.mean_reward_policy`;
            grid search, whose large boosts dominate the rewards) and of the problems without an
            agent from the full problem's optimal policy, instead of the default start and, for
            the problems without an agent, value iteration from the full problem's values.
    """

    candidate_start: bool = False

    def respond(
        self, mdp: TabularMDP, r: torch.Tensor, log_weights: torch.Tensor, boosts: torch.Tensor, without: bool
    ) -> FollowerSolution:
        with torch.no_grad():
            w, b = _broadcast(log_weights, boosts)
            total, minus = affine_problems(r, w, b) if without else (affine_total(r, w, b), None)
            start = mean_reward_policy(mdp, total, (-1,)) if self.candidate_start else None
            sol = solve_exact(mdp, total, check_finite=False, occupancy=False, init_policy=start, q=False)
            out = FollowerSolution(policy_occupancy(mdp, sol.policy), sol.value, None, w, r, sol.policy)
            if minus is not None:
                values = out.agent_values
                if start is None:  # the problems without i start from the full problem's values
                    out.asw_without = welfare_without(mdp, r, minus, sol.value, values, init_values=sol.values.unsqueeze(-2))
                else:
                    out.asw_without = welfare_without(mdp, r, minus, sol.value, values, init_policy=sol.policy.unsqueeze(-2))
                check_solved(sol.value, out.asw_without)
            else:
                check_solved(sol.value)
        return out


#: The default exact follower.
EXACT = ExactFollower()


@dataclass(frozen=True)
class RegularizedFollower(Follower):
    """The entropy-regularized follower (paper, section 4, equation 13), differentiable.

    All problems of a profile are solved in one batched call. ``asw_alpha = <c, nu> + alpha H(nu)``
    at fixed ``nu`` (the envelope theorem: its gradient in ``c`` is ``nu``); the occupancy of the
    full problem carries the solution map's gradient.

    Attributes:
        alpha: Entropy weight, finite and ``> 0``.
        backend: ``auto``, ``tree``, ``newton`` or ``cvxpylayers`` (:mod:`dmd_torch.regularized`), or
            a backend built by :func:`~dmd_torch.regularized.make_backend` (then no ``options``).
        options: The backend's options.
    """

    alpha: float
    backend: str | Backend = "auto"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", check_float("alpha", self.alpha))

    def respond(
        self, mdp: TabularMDP, r: torch.Tensor, log_weights: torch.Tensor, boosts: torch.Tensor, without: bool
    ) -> FollowerSolution:
        w, b = _broadcast(log_weights, boosts)
        c = affine_rewards(r, w, b, without)  # [..., P, n + 1, S, A] or [..., P, S, A]
        nu = regularized_occupancy(mdp, c, self.alpha, backend=self.backend, grouped=without, **self.options)
        fixed = nu.detach()
        entropy = -torch.special.xlogy(fixed, fixed).sum((-2, -1))
        asw = (c * fixed).sum((-2, -1)) + self.alpha * entropy  # envelope theorem: no gradient through nu
        if not without:
            return FollowerSolution(PolicyOccupancy(mdp.shape, nu=nu), asw, None, w, r)
        return FollowerSolution(PolicyOccupancy(mdp.shape, nu=nu[..., 0, :, :]), asw[..., 0], asw[..., 1:], w, r)

    def revenue(
        self, mdp: TabularMDP, r: torch.Tensor, log_weights: torch.Tensor, boosts: torch.Tensor
    ) -> torch.Tensor | None:
        """On a history tree, for one parameter vector and rewards that are not differentiated: the
        closed form of :func:`~dmd_torch.regularized.tree_revenue` (the same value and gradient as
        the payments of :meth:`respond`'s solution, with a fraction of the operations)."""
        solver = self.backend if isinstance(self.backend, Backend) else make_backend(mdp, self.backend, self.options)
        if (
            not isinstance(solver, TreeBackend)
            or log_weights.dim() != 1
            or boosts.dim() != 2
            or r.requires_grad
            or not (log_weights.dtype == boosts.dtype == r.dtype == mdp.dtype)
        ):
            return None
        return tree_revenue(mdp, r, log_weights, boosts, self.alpha)
