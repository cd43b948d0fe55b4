"""Gridworld (the paper's Table 5): a torus of ``g x g`` cells with replenishing goods, discounted.

The mechanism moves ``up`` ``(x, y-1)``, ``down`` ``(x, y+1)``, ``left`` ``(x-1, y)``, ``right``
``(x+1, y)`` (all modulo ``g``) from the start ``(0, 0)``, with discount ``gamma`` (0.9 by default).
An agent's type is a value per cell ``[g*g]``; it is paid every time a move *enters* a cell:
``r_i(s, a) = type_i[cell entered by (s, a)]``. Priors: ``"one_cell"`` (the paper's: a goal cell
uniform among the cells other than the start, value ``U[0, 1]``) and ``"uniform"`` (every cell other
than the start worth ``U[0, 1]``). Only boosts are optimized.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from matplotlib.figure import Figure

from dmd_torch.envs.base import Setting, uniform
from dmd_torch.mdp import TabularMDP, pick

if TYPE_CHECKING:
    from dmd_torch.description import Description

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

    @classmethod
    def shape_of(cls, n_agents: int, size: int, **options: Any) -> tuple[int, int]:
        """A cell of the ``g x g`` torus per state, one action per move."""
        return size * size, len(MOVES)

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

    def describe(self, ama: Any) -> Description:
        """A heatmap of the boosts by the cell a move enters, with the AMA's and VCG's paths for a sample profile."""
        from dmd_torch.description import Description, markdown_table

        g, b = self.size, ama.boosts.detach().cpu()
        entered = self._entered.flatten()
        per_cell = torch.zeros(g * g, dtype=torch.float64).index_add_(0, entered, b.flatten())
        per_cell /= torch.bincount(entered, minlength=g * g).clamp(min=1)
        types = self.checked_sample(1, torch.Generator().manual_seed(0)).to(ama.boosts.device)
        paths = {}
        for label, mech in (("AMA", ama), ("VCG", type(ama).vcg(self).to(ama.boosts.device))):
            policy = mech.outcome(types).policy[0].cpu()
            cell, path = 0, [0]
            for _ in range(2 * g):
                cell = int(self._entered[cell, policy[cell]])
                path.append(cell)
            paths[label] = path
        goals = [(i + 1, int(t.argmax()), float(t.max())) for i, t in enumerate(types[0].cpu())]
        fig = Figure(figsize=(4.8, 4.4))
        ax = fig.subplots()
        image = ax.imshow(per_cell.view(g, g).T.numpy(), cmap="coolwarm", origin="upper")
        for (label, path), style in zip(paths.items(), ("-o", "--s")):
            xs, ys = [c // g for c in path], [c % g for c in path]
            ax.plot(xs, ys, style, label=f"{label} path", ms=4)
        for i, cell, value in goals:
            ax.annotate(f"goal {i}\n{value:.2f}", (cell // g, cell % g), ha="center", va="center", fontsize=7)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_title("mean boost for entering each cell", fontsize=10)
        ax.legend(fontsize=7)
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        rows = [(y, *[float(per_cell[x * g + y]) for x in range(g)]) for y in range(g)]
        return Description(
            f"AMA on {self.report_key} ({self.n_agents} agents, {g} x {g} torus)",
            ["Mean boost of the moves that enter each cell (rows y, columns x; the start is (0, 0)). For the "
             f"sample profile with goals {[(i, list(self.mdp.state_labels[c]), round(v, 3)) for i, c, v in goals]}, "
             f"the AMA's path visits {[list(self.mdp.state_labels[c]) for c in paths['AMA']]} and VCG's "
             f"{[list(self.mdp.state_labels[c]) for c in paths['VCG']]}.",
             markdown_table(["y \\ x", *range(g)], rows)],
            fig,
        )

    def rewards(self, types: torch.Tensor) -> torch.Tensor:
        entered = self._entered.to(types.device)
        return pick(types, entered.flatten()).view(*types.shape[:2], *entered.shape)
