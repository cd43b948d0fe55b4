"""The affine maximizer mechanism (AMA) of the paper's Definition 3.1, as a ``torch.nn.Module``.

Given weights ``w > 0`` (parameterized as ``w = exp(theta)``) and boosts ``b[S, A]``, the AMA runs the
policy that maximizes the affine social welfare ``asw = <sum_i w_i r_i + b, nu>`` over occupancy
measures ``nu`` (paper, equation 2) and charges agent ``i``

    p_i = (asw^(-i) - (asw - w_i V_i)) / w_i,

where ``V_i = <r_i, nu*>`` is ``i``'s own value and ``asw^(-i)`` the optimal affine welfare with
``i``'s rewards set to zero (spec, "Common to all settings"). Revenue is
``sum_i p_i = sw + sum_i (asw^(-i) - asw) / w_i``. All ``n + 1`` follower problems of a profile are
solved in one batched call.

:meth:`AMA.outcome` is the exact (unregularized) outcome used for evaluation, so the mechanism is
exactly strategyproof; :meth:`AMA.forward` is the entropy-regularized, differentiable objective of
the paper's first-order method (section 4, "Regularized linear program").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dmd_torch.checks import check_finite, check_float
from dmd_torch.envs.base import Setting
from dmd_torch.exact import optimal_values, policy_occupancy, solve_exact
from dmd_torch.mdp import TabularMDP
from dmd_torch.regularized import regularized_occupancy

__all__ = ["AMA", "Outcome", "affine_rewards", "affine_problems", "certified_without", "welfare_without", "payments"]


@dataclass
class Outcome:
    """Exact outcome of an AMA on a batch of reported type profiles (``B`` profiles, ``n`` agents).

    Attributes:
        policy: Optimal deterministic policy ``[B, S]``.
        occupancy: Its occupancy measure ``nu[B, S, A]``.
        agent_values: Each agent's value ``V_i = <r_i, nu>`` under the reported rewards, ``[B, n]``.
        asw: Optimal affine welfare ``[B]``.
        asw_without: Optimal affine welfare without each agent, ``asw^(-i)``, ``[B, n]``.
        payments: Payments ``p_i`` ``[B, n]``.
        revenue: ``sum_i p_i`` ``[B]``.
        welfare: Social welfare ``sum_i V_i`` ``[B]``.
        utilities: ``V_i - p_i`` ``[B, n]``.
        loss: The setting's loss ``<q, nu>`` (e.g. makespan) ``[B]``, or ``None`` for revenue.
    """

    policy: torch.Tensor
    occupancy: torch.Tensor
    agent_values: torch.Tensor
    asw: torch.Tensor
    asw_without: torch.Tensor
    payments: torch.Tensor
    revenue: torch.Tensor
    welfare: torch.Tensor
    utilities: torch.Tensor
    loss: torch.Tensor | None

    @property
    def objective(self) -> torch.Tensor:
        """The leader's objective per profile: revenue, or the setting's loss."""
        return self.revenue if self.loss is None else self.loss


def _affine_total(r: torch.Tensor, weights: torch.Tensor, boosts: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i r_i + b`` for ``r[..., n, S, A]``, ``w[..., n]``, ``b[..., S, A]``, one fused
    multiply-add per agent (no ``[..., n, S, A]`` temporary; faster than a batched matrix product
    when ``S A`` is small)."""
    total = torch.addcmul(boosts, weights[..., 0, None, None], r[..., 0, :, :])
    for i in range(1, r.shape[-3]):
        total.addcmul_(weights[..., i, None, None], r[..., i, :, :])
    return total


def affine_problems(
    r: torch.Tensor, weights: torch.Tensor, boosts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the full problem ``sum_i w_i r_i + b`` and of the ``n`` problems without each agent.

    All arguments broadcast over leading dimensions (e.g. candidates x profiles). Two tensors, so
    that callers can solve the full problem (policy needed) apart from the others (values only).

    Args:
        r: Agent rewards ``[..., n, S, A]``.
        weights: ``w`` ``[..., n]``.
        boosts: ``b`` ``[..., S, A]``.

    Returns:
        ``[..., S, A]`` and ``[..., n, S, A]`` (index ``i``: without agent ``i``, for ``asw^(-i)``).
    """
    total = _affine_total(r, weights, boosts)
    return total, torch.addcmul(total.unsqueeze(-3), weights[..., None, None], r, value=-1.0)


def affine_rewards(
    r: torch.Tensor, weights: torch.Tensor, boosts: torch.Tensor, without: bool = True
) -> torch.Tensor:
    """Rewards of the follower problems: ``sum_i w_i r_i + b`` and, for ``asw^(-i)``, without ``i``.

    All arguments broadcast over leading dimensions (e.g. candidates x profiles).

    Args:
        r: Agent rewards ``[..., n, S, A]``.
        weights: ``w`` ``[..., n]``.
        boosts: ``b`` ``[..., S, A]``.
        without: Also return the ``n`` problems without each agent.

    Returns:
        ``[..., n + 1, S, A]`` (index 0 the full problem, ``1 + i`` without agent ``i``; see
        :func:`affine_problems`), or ``[..., S, A]`` (the full problem only) when ``without`` is false.
    """
    if not without:
        return _affine_total(r, weights, boosts)
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
    no reward grew by dropping ``w_i r_i >= 0``, so ``asw^(-i) = asw`` (e.g. the bidders who win
    nothing, the gridworld agents whose goal is never visited). The certificate is used on MDPs that
    policy iteration solves; on acyclic ones one backward sweep values all ``n`` problems
    (:func:`~dmd_torch.exact.optimal_values`) for less than selecting some. The two agree to
    round-off where both apply.

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


def payments(values: torch.Tensor, weights: torch.Tensor, asw: torch.Tensor, asw_without: torch.Tensor) -> torch.Tensor:
    """``p_i = (asw^(-i) - (asw - w_i V_i)) / w_i`` (Definition 3.1), broadcast over leading dimensions."""
    return (asw_without - (asw.unsqueeze(-1) - weights * values)) / weights


def _check_solved(setting: Setting, *values: torch.Tensor) -> None:
    """Raises if optimal values are NaN or inf (NaN/inf rewards propagate through the solvers)."""
    if not all(bool(torch.isfinite(v).all()) for v in values):
        raise ValueError(f"setting {setting.name!r} produced NaN or inf rewards for finite types")


class AMA(nn.Module):
    """Affine maximizer mechanism on a setting.

    Args:
        setting: The mechanism-design setting (its MDP, rewards and loss).
        weights: Positive weights ``[n]``; default all ones.
        boosts: Boosts ``[S, A]``; default zeros.

    Parameters ``log_weights`` and ``boosts`` require gradients only where the setting optimizes
    them (``setting.optimize_weights`` / ``setting.optimize_boosts``).
    """

    def __init__(
        self,
        setting: Setting,
        weights: torch.Tensor | None = None,
        boosts: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.setting = setting
        n = setting.n_agents
        S, A = setting.mdp.shape
        dtype = setting.mdp.dtype
        w = torch.ones(n, dtype=dtype) if weights is None else torch.as_tensor(weights, dtype=dtype).detach().clone()
        b = torch.zeros(S, A, dtype=dtype) if boosts is None else torch.as_tensor(boosts, dtype=dtype).detach().clone()
        if w.shape != (n,):
            raise ValueError(f"weights must have shape [n] = [{n}], got {tuple(w.shape)}")
        if b.shape != (S, A):
            raise ValueError(f"boosts must have shape [S, A] = [{S}, {A}], got {tuple(b.shape)}")
        if not torch.isfinite(w).all() or (w <= 0).any():
            raise ValueError(f"weights must be finite and > 0, got {w.tolist()}")
        if not torch.isfinite(b).all():
            raise ValueError("boosts contain NaN or inf")
        self.log_weights = nn.Parameter(w.log(), requires_grad=setting.optimize_weights)
        self.boosts = nn.Parameter(b, requires_grad=setting.optimize_boosts)

    @classmethod
    def vcg(cls, setting: Setting) -> AMA:
        """The VCG mechanism: ``w = 1``, ``b = 0``."""
        return cls(setting)

    @property
    def weights(self) -> torch.Tensor:
        """``w = exp(log_weights)``."""
        return self.log_weights.exp()

    def check_parameters(self) -> None:
        """Raises if a parameter holds NaN or inf (e.g. after a diverged optimizer step)."""
        for name, p in (("log_weights", self.log_weights), ("boosts", self.boosts)):
            check_finite(f"mechanism parameter {name}", p)

    def affine_rewards(self, r: torch.Tensor) -> torch.Tensor:
        """Rewards of the ``n + 1`` follower problems per profile, ``[B, n + 1, S, A]``.

        Index 0 is ``sum_i w_i r_i + b``; index ``1 + i`` drops agent ``i``'s term (``asw^(-i)``).
        """
        return affine_rewards(r, self.weights.to(r), self.boosts.to(r))

    def outcome(self, types: torch.Tensor) -> Outcome:
        """Exact outcome (policy, values, payments, revenue, welfare, loss) for reported types ``[B, n, K]``.

        The full problem is solved with its policy (:func:`~dmd_torch.exact.solve_exact`), the ``n``
        problems without each agent for their values (:func:`welfare_without`: by
        :func:`~dmd_torch.exact.optimal_values`, or without a solve where ``asw^(-i) = asw`` is
        certified); on history trees the values ``V_i`` and the loss are read off the policy's path
        (:func:`~dmd_torch.exact.policy_occupancy`).
        """
        self.check_parameters()
        setting = self.setting
        mdp = setting.mdp
        with torch.no_grad():
            r = setting.rewards(types.to(self.boosts.device))
            w = self.weights.to(r)
            total, minus = affine_problems(r, w, self.boosts.to(r))
            sol = solve_exact(mdp, total, check_finite=False, occupancy=False, q=False)
            occupancy = policy_occupancy(mdp, sol.policy)
            V = occupancy.inner(r, extra=1)
            # policy iteration (discounted MDPs) starts the problems without agent i from value
            # iteration on the full problem's values, which differ from theirs only where i's rewards matter
            asw_without = welfare_without(mdp, r, minus, sol.value, V, init_values=sol.values.unsqueeze(-2))
            _check_solved(setting, sol.value, asw_without)
            p = payments(V, w, sol.value, asw_without)
            loss = None if setting.maximize else setting.policy_loss(types, occupancy)
        return Outcome(
            policy=sol.policy,
            occupancy=occupancy.dense(),
            agent_values=V,
            asw=sol.value,
            asw_without=asw_without,
            payments=p,
            revenue=p.sum(-1),
            welfare=V.sum(-1),
            utilities=V - p,
            loss=loss,
        )

    def objective(self, types: torch.Tensor) -> torch.Tensor:
        """The leader's exact objective per profile ``[B]``: revenue, or the setting's loss.

        Revenue needs all ``n + 1`` problems (:meth:`outcome`); a loss such as the makespan only
        the full problem's policy, so the problems without each agent (the payments) are skipped.
        """
        if self.setting.maximize:
            return self.outcome(types).revenue
        self.check_parameters()
        setting = self.setting
        with torch.no_grad():
            r = setting.rewards(types.to(self.boosts.device))
            total = affine_rewards(r, self.weights.to(r), self.boosts.to(r), without=False)
            sol = solve_exact(setting.mdp, total, check_finite=False, occupancy=False, q=False)
            _check_solved(setting, sol.value)
            return setting.policy_loss(types, policy_occupancy(setting.mdp, sol.policy))

    def forward(self, types: torch.Tensor, alpha: float = 0.01, backend: str = "auto", **solver_options: Any) -> torch.Tensor:
        """Entropy-regularized objective per profile ``[B]``, differentiable in the parameters.

        The follower solves the regularized problem (:func:`dmd_torch.regularized_occupancy`,
        paper section 4, "Regularized linear program") instead of equation 2. For revenue, all
        ``n + 1`` problems per profile are solved in one batched call and

            rev_alpha = sw(nu_alpha) + sum_i (asw_alpha^(-i) - asw_alpha) / w_i,

        where ``asw_alpha = max_nu <c, nu> + alpha H(nu)`` is the regularized optimal value
        (``H(nu) = -sum nu log nu``). Gradient estimator: by the envelope theorem (the paper's
        Appendix C) ``d asw_alpha / d c = nu_alpha`` at fixed ``nu_alpha``, so only ``sw`` is
        differentiated through the solution map; the result is the exact gradient of
        ``rev_alpha``. A loss such as the makespan ``<q, nu_alpha>`` needs only the full problem and
        differentiates through ``nu_alpha``. As ``alpha -> 0`` both tend to the exact objective
        (Theorem 4.3).

        Args:
            types: Reported type profiles ``[B, n, K]``.
            alpha: Entropy weight ``> 0``.
            backend: ``auto``, ``tree``, ``newton`` or ``cvxpylayers``.
            **solver_options: Passed to the backend.
        """
        check_float("alpha", alpha)
        self.check_parameters()
        setting = self.setting
        mdp = setting.mdp
        r = setting.rewards(types.to(self.boosts.device))
        c = self.affine_rewards(r)
        if not setting.maximize:
            nu = regularized_occupancy(mdp, c[:, 0], alpha, backend=backend, **solver_options)
            return (setting.loss_vector(types).to(nu) * nu).sum((-2, -1))
        nu = regularized_occupancy(mdp, c, alpha, backend=backend, **solver_options)  # [B, n+1, S, A]
        fixed = nu.detach()
        entropy = -torch.special.xlogy(fixed, fixed).sum((-2, -1))
        asw = (c * fixed).sum((-2, -1)) + alpha * entropy  # envelope theorem: no gradient through nu
        sw = (r.sum(1) * nu[:, 0]).sum((-2, -1))
        return sw + ((asw[:, 1:] - asw[:, :1]) / self.weights).sum(-1)

    # ---------------------------------------------------------------- saving
    def get_extra_state(self) -> dict[str, Any]:
        """Setting description stored in the ``state_dict`` so ``mechanism.pt`` is self-describing."""
        s = self.setting
        return {
            "env": s.env_block(),
            "states": [s.state_label_json(x) for x in s.mdp.state_labels],
            "actions": list(s.mdp.action_labels),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Checks that a loaded ``state_dict`` belongs to this mechanism's setting."""
        mine = self.get_extra_state()
        if state.get("env") != mine["env"]:
            raise ValueError(f"state_dict is for setting {state.get('env')}, this mechanism is for {mine['env']}")
        if state.get("states") != mine["states"] or state.get("actions") != mine["actions"]:
            raise ValueError("state_dict lists states/actions that do not match this setting's MDP")

    def extra_repr(self) -> str:
        return f"setting={self.setting!r}"
