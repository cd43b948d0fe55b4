"""Sequential sales (the paper's Tables 1 and 2): ``m`` identical items, ``n`` unit-demand bidders.

States are allocation histories ``h = (a_1, ..., a_t)``, ``t = 0..m-1``, with ``a_k`` in
``{0 = nobody, 1..n}``; action ``a`` appends to the history. Bidder ``i`` gets
``r_i(h, a) = v_i`` when ``a = i`` and ``i`` is not in ``h`` (unit demand). Types are
``v_i ~ U[0, 1]`` (symmetric) or ``v_i ~ U[0, 1/i]`` (asymmetric; docs/settings.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from matplotlib.figure import Figure

from dmd_torch.envs.base import Setting, history_tree_mdp, history_tree_states, uniform

if TYPE_CHECKING:
    from dmd_torch.description import Description

__all__ = ["SequentialSales"]


class SequentialSales(Setting):
    """Sequential sales of ``size`` identical items to ``n_agents`` unit-demand bidders.

    Args:
        n_agents: Number of bidders ``n >= 1``.
        size: Number of items ``m >= 1``.
        distribution: ``"symmetric"`` (``U[0, 1]``) or ``"asymmetric"`` (``U[0, 1/i]``, weights optimized).
    """

    name = "seq_sales"
    distributions = ("symmetric", "asymmetric")
    boosts_by_height = True  # Myerson's auction (known_optimum): b(h, i) = -c_i / 2 in every history

    @classmethod
    def shape_of(cls, n_agents: int, size: int, **options: Any) -> tuple[int, int]:
        """A history per sale so far: ``sum_{t < m} (n + 1)^t`` states, ``n + 1`` actions."""
        return history_tree_states(n_agents + 1, size), n_agents + 1

    def __init__(self, n_agents: int = 3, size: int = 2, distribution: str = "symmetric") -> None:
        super().__init__(n_agents, size, distribution)
        n = self.n_agents
        self.optimize_weights = self.distribution == "asymmetric"
        self.boost_range = float(n)
        self.mdp, _ = history_tree_mdp(list(range(n + 1)), self.size)
        S, A = self.mdp.shape
        mask = torch.zeros(n, S, A, dtype=torch.float64)
        for s, h in enumerate(self.mdp.state_labels):
            for i in range(1, n + 1):
                if i not in h:
                    mask[i - 1, s, i] = 1.0
        self._mask = mask
        agent = torch.arange(1, n + 1, dtype=torch.float64)
        self._top = 1.0 / agent if self.optimize_weights else torch.ones(n, dtype=torch.float64)

    @property
    def type_dim(self) -> int:
        return 1

    @property
    def report_key(self) -> str:
        return f"seq_sales_{'sym' if self.distribution == 'symmetric' else 'asym'}"

    def type_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(self.n_agents, 1, dtype=torch.float64), self._top.unsqueeze(-1).clone()

    def sample_types(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return uniform((num, self.n_agents, 1), self._top.unsqueeze(-1), generator)

    def rewards(self, types: torch.Tensor) -> torch.Tensor:
        return types[..., None] * self._mask.to(types)

    def known_optimum(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Myerson's optimal auction as an AMA: ``w = 1``, ``b(h, i) = -c_i / 2``, ``b(h, 0) = 0``.

        Both priors are regular with virtual value ``2 v_i - c_i`` (``c_i`` the top of bidder ``i``'s
        support), and with these boosts the AMA sells to the bidders with the ``m`` largest positive
        virtual values, which is revenue-optimal (docs/settings.md).
        """
        return torch.ones(self.n_agents, dtype=torch.float64), self.myerson_boosts()

    def describe(self, ama: Any) -> Description:
        """Each bidder's effective reserve per history, beside Myerson's ``c_i / 2``.

        Against selling to nobody, bidder ``i`` wins in history ``h`` only if
        ``w_i v_i + b(h, i) > b(h, 0)``, i.e. ``v_i > (b(h, 0) - b(h, i)) / w_i``: its reserve there.
        """
        from dmd_torch.description import Description, markdown_table

        w, b = ama.weights.detach().cpu(), ama.boosts.detach().cpu()
        reserves = (b[:, :1] - b[:, 1:]) / w  # [S, n]
        n = self.n_agents
        rows = [(list(h), *[float(reserves[s, i]) if (i + 1) not in h else "has one" for i in range(n)])
                for s, h in enumerate(self.mdp.state_labels)]
        rows.append(("Myerson (c_i / 2)", *[float(c) / 2 for c in self._top]))
        fig = Figure(figsize=(7.0, 3.8))
        ax = fig.subplots()
        shown = min(len(rows) - 1, 24)
        width = 0.8 / n
        for i in range(n):
            xs = [k + (i - (n - 1) / 2) * width for k in range(shown)]
            ax.bar(xs, [float(reserves[k, i]) for k in range(shown)], width, label=f"bidder {i + 1}")
            ax.axhline(float(self._top[i]) / 2, color=f"C{i}", ls=":", lw=1)
        ax.set_xticks(range(shown), [str(list(h)) for h in self.mdp.state_labels[:shown]], rotation=90, fontsize=7)
        ax.set_ylabel("effective reserve")
        ax.set_title("effective reserves by history (dotted: Myerson's c_i / 2)", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        return Description(
            f"AMA on {self.report_key} ({n} bidders, {self.size} items)",
            ["Bidder i wins an item in history h only if its value exceeds its effective reserve "
             "(b(h, nobody) - b(h, i)) / w_i there; Myerson's optimal auction has reserve c_i / 2, half the "
             "top of i's value range.", markdown_table(["history", *[f"bidder {i + 1}" for i in range(n)]], rows)],
            fig,
        )

    def myerson_boosts(self) -> torch.Tensor:
        """The boosts of :meth:`known_optimum` ``[S, A]``."""
        S, A = self.mdp.shape
        b = torch.zeros(S, A, dtype=torch.float64)
        b[:, 1:] = -self._top / 2
        return b
