"""Gridworld (the paper's Table 5): a torus of ``g x g`` cells with replenishing goods, discounted.

The mechanism moves ``up`` ``(x, y-1)``, ``down`` ``(x, y+1)``, ``left`` ``(x-1, y)``, ``right``
``(x+1, y)`` (all modulo ``g``) from the start ``(0, 0)``, with discount ``gamma`` (0.9 by default).
An agent's type is a value per cell ``[g*g]``; it is paid every time a move *enters* a cell:
``r_i(s, a) = type_i[cell entered by (s, a)]``. Priors: ``"one_cell"`` (the paper's: a goal cell
uniform among the cells other than the start, value ``U[0, 1]``) and ``"uniform"`` (every cell other
than the start worth ``U[0, 1]``). Only boosts are optimized.
"""

from __future__ import annotations

import torch

from dmd_torch.envs.base import Setting, uniform
from dmd_torch.mdp import TabularMDP, pick

__all__ = ["Gridworld", "MOVES"]

MOVES = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}


class Gridworld(Setting):
    """Discounted gridworld on a ``size x size`` torus with ``n_agents`` agents.

    Args:
        n_agents: Number of agents ``n >= 1``.
        size: Grid side ``g >= 2``.
        distribution: ``"one_cell"`` or ``"uniform"``.
        gamma: Discount factor in ``(0, 1)``.
    """

    name = "gridworld"
    distributions = ("one_cell", "uniform")
    min_size = 2  # a goal cell other than the start

    def __init__(
        self, n_agents: int = 2, size: int = 3, distribution: str = "one_cell", gamma: float = 0.9
    ) -> None:
        super().__init__(n_agents, size, distribution)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (0.0 < gamma < 1.0):
            raise ValueError(f"gamma must lie in the open interval (0, 1), got {gamma!r}")
        self.gamma = float(gamma)
        self.boost_range = self.n_agents / (1.0 - gamma)
        g = self.size
        labels = [(x, y) for x in range(g) for y in range(g)]
        nxt = torch.tensor(
            [[((x + dx) % g) * g + (y + dy) % g for dx, dy in MOVES.values()] for x, y in labels],
            dtype=torch.long,
        )
        self._entered = nxt
        self.mdp = TabularMDP.deterministic(labels, list(MOVES), nxt, start=0, gamma=float(gamma))

    @property
    def type_dim(self) -> int:
        return self.size * self.size

    @property
    def report_key(self) -> str:
        return "gridworld" if self.distribution == "one_cell" else f"gridworld_{self.distribution}"

    def type_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        high = torch.ones(self.n_agents, self.type_dim, dtype=torch.float64)
        high[:, 0] = 0.0
        return torch.zeros_like(high), high

    def sample_types(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        cells = self.type_dim
        if self.distribution == "uniform":
            types = uniform((num, self.n_agents, cells), torch.tensor(1.0, dtype=torch.float64), generator)
            types[:, :, 0] = 0.0
            return types
        goal = torch.randint(1, cells, (num, self.n_agents), generator=generator)
        value = torch.rand(num, self.n_agents, generator=generator, dtype=torch.float64)
        types = torch.zeros(num, self.n_agents, cells, dtype=torch.float64)
        return types.scatter_(-1, goal.unsqueeze(-1), value.unsqueeze(-1))

    def rewards(self, types: torch.Tensor) -> torch.Tensor:
        entered = self._entered.to(types.device)
        return pick(types, entered.flatten()).view(*types.shape[:2], *entered.shape)
