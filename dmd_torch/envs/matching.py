"""Dynamic matching (the authors' public code, not in the paper): agents arrive over ``m`` rounds and
wait to be matched to a single resource (docs/settings.md, "Dynamic matching").

States are tuples ``(round, s_1, ..., s_n)`` with ``round`` in ``-1 .. m-1`` and ``s_i = -2`` (agent
``i`` has not arrived), ``-1`` (matched) or ``k >= 0`` (arrived in round ``k``); the start is
``(-1, -2, ..., -2)`` and only the states reachable from it are kept. Action ``0`` matches nobody,
action ``i`` matches agent ``i``. Taking action ``a`` in state ``s``: the round goes up by one; if
``a > 0`` and ``s_a >= 0``, agent ``a`` becomes matched (otherwise nothing changes); then at most one
agent arrives: with ``k`` agents not yet arrived, each of them arrives with probability
``1 / (k + 1)`` and nobody with probability ``1 / (k + 1)``, and an arriving agent's entry becomes
the new round. The action taken in round ``m - 1`` is the last.

A type is ``(v_i, patience_i)``: ``v_i ~ U[0, 1]`` (``uniform``) or ``(1/i) U[0, 1]`` (``asymmetric``,
weights optimized), patience uniform on ``{1, ..., 5}``. Agent ``i`` gets ``r_i(s, a) = v_i`` if
``a = i``, ``i`` has arrived and ``round - s_i <= patience_i``; otherwise 0. The leader's objective is
revenue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from matplotlib.figure import Figure

from dmd_torch.envs.base import Setting
from dmd_torch.mdp import TabularMDP

if TYPE_CHECKING:
    from dmd_torch.description import Description

__all__ = ["DynamicMatching", "MAX_PATIENCE"]

MAX_PATIENCE = 5
"""Patience is uniform on ``{1, ..., MAX_PATIENCE}``."""


def _successors(state: tuple[int, ...], action: int) -> list[tuple[int, ...]]:
    """The states that follow ``state`` under ``action``, each with probability ``1 / len(result)``."""
    nxt = list(state)
    nxt[0] += 1
    if action > 0 and state[action] >= 0:
        nxt[action] = -1
    waiting = [i for i in range(1, len(state)) if state[i] == -2]
    out = [tuple(nxt)]
    for i in waiting:
        arrived = list(nxt)
        arrived[i] = nxt[0]
        out.append(tuple(arrived))
    return out


class DynamicMatching(Setting):
    """Dynamic matching of one resource to ``n_agents`` arriving agents over ``size`` rounds.

    Args:
        n_agents: Number of agents ``n >= 1``.
        size: Number of rounds ``m >= 1``.
        distribution: ``"uniform"`` (``v_i ~ U[0, 1]``) or ``"asymmetric"`` (``(1/i) U[0, 1]``, weights optimized).
        gamma: Discount factor in ``(0, 1]`` (the episode ends after ``m`` rounds either way).
    """

    name = "matching"
    distributions = ("uniform", "asymmetric")

    def __init__(self, n_agents: int = 2, size: int = 3, distribution: str = "uniform", gamma: float = 1.0) -> None:
        super().__init__(n_agents, size, distribution)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (0.0 < gamma <= 1.0):
            raise ValueError(f"gamma must lie in (0, 1], got {gamma!r}")
        self.gamma = float(gamma)
        n, m = self.n_agents, self.size
        self.optimize_weights = self.distribution == "asymmetric"
        self.boost_range = float(n)
        start = (-1,) + (-2,) * n
        seen, frontier = {start}, [start]
        while frontier:  # the states reachable from the start
            state = frontier.pop()
            if state[0] + 1 >= m:
                continue
            for a in range(n + 1):
                for nxt in _successors(state, a):
                    if nxt not in seen:
                        seen.add(nxt)
                        frontier.append(nxt)
        labels = sorted(seen)
        index = {s: k for k, s in enumerate(labels)}
        S, A, K = len(labels), n + 1, n + 1
        next_states = torch.zeros(S, A, K, dtype=torch.long)
        next_probs = torch.zeros(S, A, K, dtype=torch.float64)
        for s, state in enumerate(labels):
            if state[0] + 1 >= m:
                continue  # the last round: the episode ends
            for a in range(A):
                outs = _successors(state, a)
                for k, nxt in enumerate(outs):
                    next_states[s, a, k] = index[nxt]
                    next_probs[s, a, k] = 1.0 / len(outs)
        mu0 = torch.zeros(S, dtype=torch.float64)
        mu0[index[start]] = 1.0
        self.mdp = TabularMDP(labels, list(range(A)), next_states, next_probs, mu0, self.gamma)
        table = torch.tensor(labels, dtype=torch.float64)  # [S, 1 + n]
        arrived = table[:, 1:] >= 0
        self._waited = torch.where(arrived, table[:, :1] - table[:, 1:], torch.full_like(table[:, 1:], torch.inf))  # [S, n]
        self._top = 1.0 / torch.arange(1, n + 1, dtype=torch.float64) if self.optimize_weights else torch.ones(n, dtype=torch.float64)

    @property
    def type_dim(self) -> int:
        return 2

    @property
    def report_key(self) -> str:
        return f"matching_{self.distribution}"

    def type_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        low = torch.zeros(self.n_agents, 2, dtype=torch.float64)
        low[:, 1] = 1.0
        high = torch.stack([self._top, torch.full_like(self._top, float(MAX_PATIENCE))], -1)
        return low, high

    def sample_types(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        value = torch.rand(num, self.n_agents, generator=generator, dtype=torch.float64) * self._top
        patience = torch.randint(1, MAX_PATIENCE + 1, (num, self.n_agents), generator=generator).to(torch.float64)
        return torch.stack([value, patience], -1)

    def describe(self, ama: Any) -> Description:
        """When the mechanism matches, and whom: per round, the probability of a match and of matching
        each agent, under the AMA and under VCG, on 2,000 sampled profiles."""
        from dmd_torch.description import Description, markdown_table

        types = self.checked_sample(2000, torch.Generator().manual_seed(0)).to(ama.boosts.device)
        table = torch.tensor(self.mdp.state_labels)  # [S, 1 + n]
        rounds = table[:, 0]
        # a match of agent i happens in state s by action i where i has arrived and is unmatched
        valid = torch.cat([torch.zeros(len(table), 1, dtype=torch.bool), table[:, 1:] >= 0], 1).to(torch.float64)  # [S, A]
        rates = {}
        for label, mech in (("AMA", ama), ("VCG", type(ama).vcg(self).to(ama.boosts.device))):
            nu = mech.outcome(types).occupancy.mean(0).cpu() * valid  # [S, A]
            rates[label] = torch.stack([nu[rounds == r].sum(0) for r in range(self.size)])  # [m, A]
        rows = [(r, *[f"{float(rates['AMA'][r, i]):.3f} ({float(rates['VCG'][r, i]):.3f})" for i in range(1, self.n_agents + 1)],
                 f"{float(rates['AMA'][r].sum()):.3f} ({float(rates['VCG'][r].sum()):.3f})") for r in range(self.size)]
        fig = Figure(figsize=(6.0, 3.6))
        ax = fig.subplots()
        for label, style in (("AMA", "-o"), ("VCG", "--s")):
            ax.plot(range(self.size), rates[label].sum(1).tolist(), style, label=f"{label}: any match")
        for i in range(1, self.n_agents + 1):
            ax.plot(range(self.size), rates["AMA"][:, i].tolist(), ":", label=f"AMA: agent {i}")
        ax.set_xlabel("round")
        ax.set_ylabel("probability of a match")
        ax.set_title("when the mechanism matches, and whom", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        return Description(
            f"AMA on {self.report_key} ({self.n_agents} agents, {self.size} rounds)",
            ["Probability that the mechanism matches each agent in each round, AMA (VCG), and that it matches "
             "anybody:", markdown_table(["round", *[f"agent {i}" for i in range(1, self.n_agents + 1)], "any"], rows)],
            fig,
        )

    def rewards(self, types: torch.Tensor) -> torch.Tensor:
        B, n, _ = types.shape
        waited = self._waited.to(types).T  # [n, S]
        patient = waited.unsqueeze(0) <= types[:, :, 1:]  # [B, n, S]: arrived, and still waiting
        r = types.new_zeros(B, n, self.mdp.num_states, n + 1)
        # r[b, i, s, a] = v_i where a = i + 1, written on the agent = action - 1 diagonal
        r[..., 1:].diagonal(0, 1, 3).copy_((types[:, :, :1] * patient).transpose(1, 2))
        return r
