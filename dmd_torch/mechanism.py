"""The affine maximizer mechanism (AMA) of the paper's Definition 3.1, as a ``torch.nn.Module``.

Given weights ``w > 0`` (parameterized as ``w = exp(theta)``) and boosts ``b[S, A]``, the AMA runs the
policy that maximizes the affine social welfare ``asw = <sum_i w_i r_i + b, nu>`` over occupancy
measures ``nu`` (paper, equation 2) and charges the payments of Definition 3.1
(:func:`dmd_torch.objective.payments`). All ``n + 1`` follower problems of a profile are solved in
one batched call (:mod:`dmd_torch.follower`).

:meth:`AMA.outcome` and :meth:`AMA.objective` are exact (unregularized), what evaluation uses, so
the mechanism is exactly strategyproof; :meth:`AMA.forward` is the entropy-regularized,
differentiable objective of the paper's first-order method (section 4). All three are the one
computation :func:`~dmd_torch.objective.leader_objective` with a different follower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dmd_torch.checks import all_finite
from dmd_torch.envs.base import Setting
from dmd_torch.follower import EXACT, RegularizedFollower
from dmd_torch.objective import leader_objective, payments
from dmd_torch.regularized import Backend
from dmd_torch.runtime import exact_threads
from dmd_torch.soundness import check_sound

__all__ = ["AMA", "Outcome"]


@dataclass
class Outcome:
    """Exact outcome of an AMA on a batch of reported type profiles (``B`` profiles, ``n`` agents).

    Attributes:
        policy: Optimal deterministic policy ``[B, S]``.
        occupancy: Its occupancy measure ``nu[B, S, A]``.
        agent_values: Each agent's value ``V_i = <r_i, nu>`` under the reported rewards, ``[B, n]``.
        asw: Optimal affine welfare ``[B]``.
        asw_without: Optimal affine welfare without each agent, ``asw^(-i)``, ``[B, n]``.
        payments: Payments ``p_i`` ``[B, n]`` (Definition 3.1).
        revenue: ``sum_i p_i`` ``[B]``.
        welfare: Social welfare ``sum_i V_i`` ``[B]``.
        utilities: ``V_i - p_i`` ``[B, n]``.
        objective: The setting's objective (revenue, or its loss such as the makespan) ``[B]``.
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
    objective: torch.Tensor


class AMA(nn.Module):
    """Affine maximizer mechanism on a setting.

    Args:
        setting: The mechanism-design setting (its MDP, rewards and objective).
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
        if not all_finite(w) or (w <= 0).any():
            raise ValueError(f"weights must be finite and > 0, got {w.tolist()}")
        if not all_finite(b):
            raise ValueError("boosts contain NaN or inf")
        self.log_weights = nn.Parameter(w.log(), requires_grad=setting.optimize_weights)
        self.boosts = nn.Parameter(b, requires_grad=setting.optimize_boosts)

    @classmethod
    def vcg(cls, setting: Setting) -> AMA:
        """The VCG mechanism: ``w = 1``, ``b = 0``."""
        return cls(setting)

    @classmethod
    def known_optimum(cls, setting: Setting) -> AMA | None:
        """The AMA the setting knows to be optimal (:meth:`Setting.known_optimum`), or ``None``."""
        best = setting.known_optimum()
        return None if best is None else cls(setting, weights=best[0], boosts=best[1])

    @property
    def weights(self) -> torch.Tensor:
        """``w = exp(log_weights)``."""
        return self.log_weights.exp()

    def check_parameters(self) -> None:
        """Raises if a parameter holds NaN or inf (e.g. after a diverged optimizer step), or if the
        parameters dwarf the rewards so far that float64 cannot keep the mechanism strategyproof
        (:func:`dmd_torch.soundness.check_sound`)."""
        check_sound(self.setting, self.log_weights, self.boosts)

    def ic_tolerance(self) -> float:
        """How far rounding can bend the incentives, relative to the rewards (:mod:`dmd_torch.soundness`)."""
        return check_sound(self.setting, self.log_weights, self.boosts)

    def outcome(self, types: torch.Tensor) -> Outcome:
        """Exact outcome (policy, values, payments, revenue, welfare, objective) for reported types ``[B, n, K]``.

        The full problem is solved with its policy, the ``n`` problems without each agent for their
        values (:class:`~dmd_torch.follower.ExactFollower`); on history trees the values ``V_i`` and a
        loss are read off the policy's path.
        """
        self.check_parameters()
        setting = self.setting
        types = types.to(self.boosts.device)
        r = setting.checked_rewards(types)
        with exact_threads(setting):
            sol = EXACT.respond(setting.mdp, r, self.log_weights, self.boosts, without=True)
        assert sol.asw_without is not None and sol.policy is not None
        with torch.no_grad():
            p = payments(sol.agent_values, sol.weights, sol.asw, sol.asw_without)
            objective = setting.objective.value(setting, types, r, sol)
        values = sol.agent_values
        return Outcome(
            policy=sol.policy,
            occupancy=sol.occupancy.dense(),
            agent_values=values,
            asw=sol.asw,
            asw_without=sol.asw_without,
            payments=p,
            revenue=p.sum(-1),
            welfare=values.sum(-1),
            utilities=values - p,
            objective=objective,
        )

    def objective(self, types: torch.Tensor) -> torch.Tensor:
        """The leader's exact objective per profile ``[B]``: only the solves the objective needs
        (a loss such as the makespan skips the problems without each agent)."""
        self.check_parameters()
        with torch.no_grad():
            return leader_objective(self.setting, self.log_weights, self.boosts, types.to(self.boosts.device))

    def forward(
        self, types: torch.Tensor, alpha: float = 0.01, backend: str | Backend = "auto", **solver_options: Any
    ) -> torch.Tensor:
        """Entropy-regularized objective per profile ``[B]``, differentiable in the parameters.

        The follower solves the regularized problem (paper, section 4, equation 13) instead of
        equation 2 (:class:`~dmd_torch.follower.RegularizedFollower`): the affine welfare terms of the
        payments by the envelope theorem (Appendix C), the agents' values or the loss through the
        regularized solution, which gives the exact gradient of the regularized objective. As
        ``alpha -> 0`` it tends to the exact objective (Theorem 4.3).

        Args:
            types: Reported type profiles ``[B, n, K]``.
            alpha: Entropy weight ``> 0``.
            backend: ``auto``, ``tree``, ``newton`` or ``cvxpylayers``, or a backend built by
                :func:`~dmd_torch.regularized.make_backend` for this setting's MDP.
            **solver_options: The backend's options (none with a built backend).
        """
        follower = RegularizedFollower(alpha, backend, solver_options)
        self.check_parameters()
        return leader_objective(self.setting, self.log_weights, self.boosts, types.to(self.boosts.device), follower)

    # ---------------------------------------------------------------- saving
    def get_extra_state(self) -> dict[str, Any]:
        """Setting description stored in the ``state_dict`` so ``mechanism.pt`` is self-describing."""
        s = self.setting
        return {
            "env": s.config(),
            "states": [s.state_label_json(x) for x in s.mdp.state_labels],
            "actions": list(s.mdp.action_labels),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Checks that a loaded ``state_dict`` belongs to this mechanism's setting."""
        mine = self.get_extra_state()
        if not isinstance(state, dict) or state.get("env") != mine["env"]:
            env = state.get("env") if isinstance(state, dict) else state
            raise ValueError(f"state_dict is for setting {env}, this mechanism is for {mine['env']}")
        if state.get("states") != mine["states"] or state.get("actions") != mine["actions"]:
            raise ValueError("state_dict lists states/actions that do not match this setting's MDP")

    def extra_repr(self) -> str:
        return f"setting={self.setting!r}"
