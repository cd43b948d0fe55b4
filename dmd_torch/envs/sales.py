"""Sequential sales (the paper's Tables 1 and 2): ``m`` identical items, ``n`` unit-demand bidders.

States are allocation histories ``h = (a_1, ..., a_t)``, ``t = 0..m-1``, with ``a_k`` in
``{0 = nobody, 1..n}``; action ``a`` appends to the history. Bidder ``i`` gets
``r_i(h, a) = v_i`` when ``a = i`` and ``i`` is not in ``h`` (unit demand). Types are
``v_i ~ U[0, 1]`` (symmetric) or ``v_i ~ U[0, 1/i]`` (asymmetric; spec, "Sequential sales").
"""

from __future__ import annotations

import torch

from dmd_torch.checks import check_int
from dmd_torch.envs.base import Setting, history_tree_mdp, uniform

__all__ = ["SequentialSales", "SALES_DISTRIBUTIONS"]

SALES_DISTRIBUTIONS = ("symmetric", "asymmetric")


class SequentialSales(Setting):
    """Sequential sales of ``size`` identical items to ``n_agents`` unit-demand bidders.

    Args:
        n_agents: Number of bidders ``n >= 1``.
        size: Number of items ``m >= 1``.
        distribution: ``"symmetric"`` (``U[0, 1]``) or ``"asymmetric"`` (``U[0, 1/i]``, weights optimized).
    """

    name = "seq_sales"
    objective = "revenue"

    def __init__(self, n_agents: int = 2, size: int = 2, distribution: str = "symmetric") -> None:
        self.n_agents = check_int("n_agents", n_agents)
        self.size = check_int("size", size)
        if distribution not in SALES_DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {distribution!r} for seq_sales; allowed: {', '.join(SALES_DISTRIBUTIONS)}")
        self.distribution = distribution
        self.optimize_weights = distribution == "asymmetric"
        self.boost_range = float(n_agents)
        n = n_agents
        self.mdp, _ = history_tree_mdp(list(range(n + 1)), size)
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

    def type_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(self.n_agents, 1, dtype=torch.float64), self._top.unsqueeze(-1).clone()

    def sample_types(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return uniform((check_int("num", num), self.n_agents, 1), self._top.unsqueeze(-1), generator)

    def rewards(self, types: torch.Tensor) -> torch.Tensor:
        self.check_types(types)
        mask = self._mask.to(types)
        return types[..., None] * mask

    def myerson_boosts(self) -> torch.Tensor:
        """Boosts of the revenue-optimal (Myerson) AMA: ``b(h, i) = -c_i / 2``, ``b(h, 0) = 0``.

        With ``w = 1`` the AMA sells to the bidders with the ``m`` largest positive virtual values
        ``2 v_i - c_i`` (spec, "Known optimum"), ``c_i`` the top of bidder ``i``'s support.
        """
        S, A = self.mdp.shape
        b = torch.zeros(S, A, dtype=torch.float64)
        b[:, 1:] = -self._top / 2
        return b
