"""Static auctions: the paper's remark that static mechanism design is a one-state MDP (footnote 1).

``m`` items are sold to ``n`` bidders in one step. The MDP has one state, labelled ``()`` (``[]`` in
``mechanism.json``), and one action per allocation ``(a_1, ..., a_m)``, ``a_j`` in ``{0 = unsold,
1 .. n}``: ``(n + 1)^m`` actions. Values are ``v_ij ~ U[0, 1]``; bidder ``i``'s reward for an
allocation is its value for the bundle it gets: the sum (``additive``) or the largest
(``unit_demand``) of ``v_ij`` over its items. Known optima (docs/settings.md, "Static auctions"):

* ``n`` bidders, one item: Myerson's auction with reserve 1/2, the AMA with boost ``-1/2`` on every sale;
* one bidder, two additive items: Manelli & Vincent's menu, each item at 2/3 and the bundle at
  ``(4 - sqrt 2) / 3``;
* one bidder, two unit-demand items: the posted price ``1 / sqrt 3``.

A single bidder's AMA is a menu of bundle prices: it buys the bundle ``a`` maximizing
``v(a) + b(a)`` and pays ``b(nothing) - b(a)``.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import torch
from matplotlib.figure import Figure

from dmd_torch.envs.base import Setting
from dmd_torch.mdp import TabularMDP

if TYPE_CHECKING:
    from dmd_torch.description import Description

__all__ = ["StaticAuction", "MAX_ALLOCATIONS", "VALUATIONS"]

VALUATIONS = ("additive", "unit_demand")
MAX_ALLOCATIONS = 2**20
"""The most allocations ``(n + 1)^m`` a static auction may have: a training step holds about
``20 (n + 1) n (n + 1)^m`` numbers, which past this size no longer fits a laptop's memory."""


class StaticAuction(Setting):
    """A one-shot auction of ``size`` items to ``n_agents`` bidders with uniform values.

    Args:
        n_agents: Number of bidders ``n >= 1``.
        size: Number of items ``m >= 1``; ``(n + 1)^m`` must not exceed :data:`MAX_ALLOCATIONS`.
        valuation: ``"additive"`` or ``"unit_demand"``.
        distribution: ``"uniform"``: ``v_ij ~ U[0, 1]``.
    """

    name = "static_auction"
    distributions = ("uniform",)

    @classmethod
    def shape_of(cls, n_agents: int, size: int, **options: Any) -> tuple[int, int] | None:
        """One state; an action per allocation, ``(n + 1)^m`` (``None`` past :data:`MAX_ALLOCATIONS`:
        the constructor's own guard names the size)."""
        count = (n_agents + 1) ** size
        return None if count > MAX_ALLOCATIONS else (1, count)

    def __init__(self, n_agents: int = 2, size: int = 1, valuation: str = "additive", distribution: str = "uniform") -> None:
        super().__init__(n_agents, size, distribution)
        if valuation not in VALUATIONS:
            raise ValueError(f"unknown valuation {valuation!r} for static_auction; allowed: {', '.join(VALUATIONS)}")
        self.valuation = valuation
        n, m = self.n_agents, self.size
        count = (n + 1) ** m
        if count > MAX_ALLOCATIONS:
            raise ValueError(f"static_auction with {n} bidders and {m} items has (n+1)^m = {count} allocations, "
                             f"too many to fit in memory; allowed: (n+1)^m <= {MAX_ALLOCATIONS}")
        allocations = list(itertools.product(range(n + 1), repeat=m))
        self.mdp = TabularMDP.deterministic([()], allocations, torch.full((1, count), -1, dtype=torch.long))
        alloc = torch.tensor(allocations, dtype=torch.long)  # [A, m]
        self._owns = (alloc.unsqueeze(0) == torch.arange(1, n + 1).view(n, 1, 1)).to(torch.float64)  # [n, A, m]
        self.boost_range = float(m) if valuation == "additive" else 1.0

    @property
    def type_dim(self) -> int:
        return self.size

    @property
    def report_key(self) -> str:
        return f"static_{self.valuation}"

    def type_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.n_agents, self.size)
        return torch.zeros(shape, dtype=torch.float64), torch.ones(shape, dtype=torch.float64)

    def sample_types(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.rand(num, self.n_agents, self.size, generator=generator, dtype=torch.float64)

    def rewards(self, types: torch.Tensor) -> torch.Tensor:
        owns = self._owns.to(types)  # [n, A, m]
        value = types[:, :, None, 0] * owns[..., 0]  # [B, n, A]: item by item, no [B, n, A, m] temporary
        for j in range(1, self.size):
            held = types[:, :, None, j] * owns[..., j]
            value = value + held if self.valuation == "additive" else torch.maximum(value, held)
        return value.unsqueeze(2)  # [B, n, 1, A]

    def allocation_index(self, allocation: tuple[int, ...]) -> int:
        """The action of an allocation ``(a_1, ..., a_m)``."""
        return self.mdp.action_labels.index(tuple(allocation))

    def describe(self, ama: Any) -> Description:
        """The menu: each allocation's boost and, for one bidder, the price it pays for its bundle."""
        from dmd_torch.description import Description, markdown_table

        b = ama.boosts.detach().cpu()[0]
        nothing = self.allocation_index((0,) * self.size)
        one = self.n_agents == 1
        rows = [(list(a), float(b[k]), float(b[nothing] - b[k]) if one else "") for k, a in enumerate(self.mdp.action_labels)]
        fig = Figure(figsize=(min(10.0, 2.0 + 0.35 * len(rows)), 3.4))
        ax = fig.subplots()
        values = [r[2] for r in rows] if one else [r[1] for r in rows]
        ax.bar(range(len(rows)), values)
        ax.set_xticks(range(len(rows)), [str(r[0]) for r in rows], rotation=90, fontsize=7)
        ax.set_ylabel("price" if one else "boost")
        ax.set_title("the menu of bundle prices" if one else "boost of each allocation", fontsize=10)
        fig.tight_layout()
        text = ("One bidder: it buys the bundle a maximizing v(a) + b(a), and pays b(nothing) - b(a), the price of "
                "the bundle; the AMA is this menu of prices." if one else
                "The AMA chooses the allocation maximizing sum_i w_i v_i(a) + b(a); a boost below 0 works as a reserve "
                f"on that allocation. Weights: {[round(x, 4) for x in ama.weights.detach().cpu().tolist()]}.")
        return Description(
            f"AMA on {self.report_key} ({self.n_agents} bidders, {self.size} items)",
            [text, markdown_table(["allocation (bidder of item 1, 2, ...)", "boost", "price (one bidder)"], rows)],
            fig,
        )

    def known_optimum(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Myerson's auction for one item; the optimal menus for one bidder and two items; else ``None``."""
        n, m = self.n_agents, self.size
        b = torch.zeros(self.mdp.shape, dtype=torch.float64)
        if m == 1:
            b[0, 1:] = -0.5  # reserve 1/2 on every sale
        elif n == 1 and m == 2 and self.valuation == "additive":
            b[0, self.allocation_index((1, 0))] = b[0, self.allocation_index((0, 1))] = -2.0 / 3.0
            b[0, self.allocation_index((1, 1))] = -(4.0 - math.sqrt(2.0)) / 3.0
        elif n == 1 and m == 2:
            price = 1.0 / math.sqrt(3.0)
            b[0, self.allocation_index((1, 0))] = b[0, self.allocation_index((0, 1))] = -price
            b[0, self.allocation_index((1, 1))] = -2.0 * price  # never better than one item at the price
        else:
            return None
        return torch.ones(n, dtype=torch.float64), b
