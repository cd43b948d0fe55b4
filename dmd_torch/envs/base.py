"""What a mechanism-design setting provides: an MDP, a type prior, rewards and the leader's loss.

A *type profile* is a tensor ``types[B, n, K]``: one row of ``K`` numbers per agent (a value in the
sales settings, a cost per task in scheduling, a value per cell in the gridworld). A setting turns
reported types into rewards ``r[B, n, S, A]`` on its MDP; the mechanism (:mod:`dmd_torch.mechanism`)
does the rest. A user-defined setting subclasses :class:`Setting` and implements
:meth:`Setting.sample_types` and :meth:`Setting.rewards` (and :meth:`Setting.loss_vector` for a loss
other than revenue).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from dmd_torch.exact import PolicyOccupancy
from dmd_torch.mdp import TabularMDP

__all__ = ["Setting", "history_tree_mdp", "uniform"]

class Setting(ABC):
    """Base class of a dynamic mechanism-design setting.

    Attributes:
        name: Factory name (``seq_sales``, ``scheduling``, ``gridworld`` or a user's own).
        n_agents: Number of agents ``n``.
        size: Size parameter (items, tasks, grid side).
        distribution: Name of the type prior.
        mdp: The :class:`~dmd_torch.mdp.TabularMDP` the mechanism controls.
        objective: ``"revenue"`` (maximized) or the name of a loss (minimized) given by
            :meth:`loss_vector`.
        optimize_weights: Whether the paper optimizes the AMA weights in this setting.
        optimize_boosts: Whether the paper optimizes the AMA boosts in this setting.
        boost_range: Half-width ``B`` of the Sobol search box ``[-B, B]`` for the boosts.
    """

    name: str
    n_agents: int
    size: int
    distribution: str
    mdp: TabularMDP
    objective: str = "revenue"
    optimize_weights: bool = False
    optimize_boosts: bool = True
    boost_range: float = 1.0

    # ---------------------------------------------------------------- what a setting implements
    @property
    @abstractmethod
    def type_dim(self) -> int:
        """Number ``K`` of type coordinates per agent."""

    @abstractmethod
    def type_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper ends ``[n, K]`` of each agent's type support (used for misreports)."""

    @abstractmethod
    def sample_types(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws ``num`` independent type profiles ``[num, n, K]`` from the prior."""

    @abstractmethod
    def rewards(self, types: torch.Tensor) -> torch.Tensor:
        """Maps type profiles ``[B, n, K]`` to rewards ``r[B, n, S, A]``."""

    def loss_vector(self, types: torch.Tensor) -> torch.Tensor:
        """Per-state-action loss ``q[B, S, A]`` with loss = ``<q, nu>`` (objectives other than revenue)."""
        raise NotImplementedError(f"setting {self.name!r} has objective {self.objective!r} and no loss vector")

    def policy_loss(self, types: torch.Tensor, occupancy: PolicyOccupancy) -> torch.Tensor:
        """The loss ``<q, nu>`` of the chosen deterministic policies, one per profile ``[B]``.

        ``occupancy`` comes from :func:`~dmd_torch.exact.policy_occupancy`. By default this is
        :meth:`loss_vector` contracted with it; a setting may compute it more cheaply, e.g. from
        the policies' paths alone (the scheduling makespan).
        """
        return occupancy.inner(self.loss_vector(types))

    # ---------------------------------------------------------------- shared behaviour
    @property
    def maximize(self) -> bool:
        """True when the leader's objective is maximized (revenue), False when it is a loss."""
        return self.objective == "revenue"

    def check_types(self, types: torch.Tensor) -> torch.Tensor:
        """Validates a type tensor ``[B, n, K]``: shape and finiteness."""
        if not isinstance(types, torch.Tensor):
            raise TypeError(f"types must be a torch.Tensor, got {type(types).__name__}")
        want = (self.n_agents, self.type_dim)
        if types.dim() != 3 or tuple(types.shape[1:]) != want:
            raise ValueError(f"types must have shape [B, n, K] = [B, {want[0]}, {want[1]}], got {tuple(types.shape)}")
        if not torch.isfinite(types).all():
            raise ValueError("types contain NaN or inf")
        return types

    def env_block(self) -> dict[str, Any]:
        """The ``env`` block written to ``mechanism.json`` and ``results.json``."""
        block: dict[str, Any] = {
            "name": self.name,
            "n_agents": self.n_agents,
            "size": self.size,
            "distribution": self.distribution,
        }
        if self.mdp.gamma < 1.0:
            block["gamma"] = self.mdp.gamma
        return block

    def state_label_json(self, label: Any) -> Any:
        """A state label as JSON (tuples become lists)."""
        return list(label) if isinstance(label, tuple) else label

    def __repr__(self) -> str:
        S, A = self.mdp.shape
        return (
            f"{type(self).__name__}(name={self.name!r}, n_agents={self.n_agents}, size={self.size}, "
            f"distribution={self.distribution!r}, S={S}, A={A}, objective={self.objective!r})"
        )


def history_tree_mdp(actions: list[int], horizon: int) -> tuple[TabularMDP, torch.Tensor]:
    """The finite-horizon MDP whose states are action histories ``(a_1, ..., a_t)``, ``t < horizon``.

    Transitions are deterministic, ``h -> h + (a)``; the ``horizon``-th action ends the episode.

    Returns:
        The MDP (state labels are history tuples, action labels ``actions``) and the length of each
        state's history ``[S]``.
    """
    labels: list[tuple[int, ...]] = [()]
    frontier: list[tuple[int, ...]] = [()]
    for _ in range(horizon - 1):
        frontier = [h + (a,) for h in frontier for a in actions]
        labels.extend(frontier)
    index = {h: k for k, h in enumerate(labels)}
    nxt = torch.tensor(
        [[index.get(h + (a,), -1) for a in actions] for h in labels], dtype=torch.long
    )
    depth = torch.tensor([len(h) for h in labels], dtype=torch.long)
    return TabularMDP.deterministic(labels, list(actions), nxt, start=0), depth


def uniform(shape: tuple[int, ...], high: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draws ``U[0, high]`` (``high`` broadcast against ``shape``) in float64."""
    return torch.rand(shape, generator=generator, dtype=torch.float64) * high
