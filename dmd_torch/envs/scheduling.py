"""Dynamic task scheduling (the paper's Tables 3 and 4): ``T`` tasks arrive one by one, ``n`` workers.

States are assignment histories ``(a_1, ..., a_{t-1})``, actions ``{1..n}``. Worker ``i`` has cost
``c[i, tau]`` for task ``tau`` and reward ``r_i(h, a) = -c[i, len(h)+1]`` when ``a = i``. Costs are
``U[0, 3]`` (symmetric) or ``i * U[0, 3]`` (asymmetric). The leader's loss is the makespan left after
the last assignment, simulated as a queue (docs/settings.md, "Dynamic task scheduling"): before each task, every
worker with remaining work ``R_i > 0`` works one unit (``R_i -= 1``, *not* clamped at zero by
default, as in the published figures; ``clamped=True`` gives the physical rule), then the assigned
worker's ``R`` grows by its cost; makespan = ``max(max_i R_i, 0)``. It depends only on the final
state-action pair, so it is linear in the occupancy measure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from matplotlib.figure import Figure

from dmd_torch.checks import check_bool
from dmd_torch.envs.base import Setting, history_tree_mdp, history_tree_states, uniform
from dmd_torch.exact import PolicyOccupancy
from dmd_torch.mdp import pick
from dmd_torch.objective import Loss

if TYPE_CHECKING:
    from dmd_torch.description import Description

__all__ = ["TaskScheduling", "queue_makespan"]

_COST_TOP = 3.0


def queue_makespan(costs: torch.Tensor, assignment: torch.Tensor, clamped: bool = False) -> torch.Tensor:
    """Makespan of complete assignments under the queue rule.

    Args:
        costs: Worker costs ``[B, n, T]``.
        assignment: Worker index (0-based) of each task, ``[..., B, T]`` (leading dimensions, e.g.
            candidate mechanisms, broadcast).
        clamped: Clamp remaining work at zero (physical rule) instead of carrying credit.

    Returns:
        Makespans ``[..., B]``.
    """
    B, n, T = costs.shape
    lead = assignment.shape[:-2]
    R = torch.zeros(*lead, B, n, dtype=costs.dtype, device=costs.device)
    onehot = torch.eye(n, dtype=costs.dtype, device=costs.device)
    for tau in range(T):
        who = assignment[..., tau]  # [..., B]
        cost = costs[..., tau].expand(*lead, B, n).gather(-1, who.unsqueeze(-1))  # [..., B, 1]
        R = _queue_step(R, onehot[who] * cost, clamped)
    return R.max(-1).values.clamp(min=0.0)


class TaskScheduling(Setting):
    """Dynamic task scheduling of ``size`` tasks on ``n_agents`` workers, minimizing makespan.

    Args:
        n_agents: Number of workers ``n >= 1``.
        size: Number of tasks ``T >= 1``.
        distribution: ``"symmetric"`` (``U[0, 3]``) or ``"asymmetric"`` (``i * U[0, 3]``, weights optimized).
        clamped: Use the clamped (physical) queue rule for the makespan instead of the published one.
    """

    name = "scheduling"
    distributions = ("symmetric", "asymmetric")
    objective = Loss("makespan")

    @classmethod
    def shape_of(cls, n_agents: int, size: int, **options: Any) -> tuple[int, int]:
        """A history per assignment so far: ``sum_{t < T} n^t`` states, ``n`` actions."""
        return history_tree_states(n_agents, size), n_agents

    def __init__(
        self, n_agents: int = 2, size: int = 4, distribution: str = "symmetric", clamped: bool = False
    ) -> None:
        super().__init__(n_agents, size, distribution)
        self.clamped = check_bool("clamped", clamped)
        self.optimize_weights = self.distribution == "asymmetric"
        n, size = self.n_agents, self.size
        self.boost_range = float(n * max(n, 3))
        self.mdp, self._depth = history_tree_mdp(list(range(1, n + 1)), size)
        scale = torch.arange(1, n + 1, dtype=torch.float64) if self.optimize_weights else torch.ones(n, dtype=torch.float64)
        self._top = _COST_TOP * scale
        # Terminal state-action pairs (the full assignment they complete), for the makespan.
        S, A = self.mdp.shape
        last = (self._depth == size - 1).nonzero().flatten()
        self._terminal_states = last
        # The queue after each history, built along the tree: parent state and worker of its last task.
        index = {h: k for k, h in enumerate(self.mdp.state_labels)}
        self._parent = torch.tensor([index.get(h[:-1], 0) for h in self.mdp.state_labels], dtype=torch.long)
        self._last_worker = torch.tensor([h[-1] - 1 if h else 0 for h in self.mdp.state_labels], dtype=torch.long)
        self._by_depth = [(self._depth == d).nonzero().flatten() for d in range(size)]

    @property
    def type_dim(self) -> int:
        return self.size

    @property
    def report_key(self) -> str:
        return f"scheduling_{'sym' if self.distribution == 'symmetric' else 'asym'}" + ("_clamped" if self.clamped else "")

    def type_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        high = self._top.unsqueeze(-1).expand(self.n_agents, self.size).clone()
        return torch.zeros_like(high), high

    def sample_types(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return uniform((num, self.n_agents, self.size), self._top[:, None], generator)

    def rewards(self, types: torch.Tensor) -> torch.Tensor:
        B, n, _ = types.shape
        depth = self._depth.to(types.device)
        r = types.new_zeros(B, n, len(depth), n)
        # r[b, i, s, a] = -types[b, i, task of s] if a == i: written on the agent = action diagonal
        r.diagonal(0, 1, 3).copy_(pick(types, depth).transpose(1, 2)).neg_()
        return r

    def policy_loss(self, types: torch.Tensor, occupancy: PolicyOccupancy) -> torch.Tensor:
        """Makespan of the chosen assignments ``[..., B]``: the queue simulated along each policy's path.

        The path's actions are the assignment of the tasks (action ``a`` = worker ``a + 1``), so no
        loss vector is needed; equal to ``<loss_vector(types), nu>``.
        """
        if occupancy.path is None:
            return super().policy_loss(types, occupancy)
        workers = occupancy.path % self.mdp.num_actions  # [..., B, T]
        return queue_makespan(types, workers, self.clamped)

    def describe(self, ama: Any) -> Description:
        """Which worker gets each task, under the AMA and under VCG, on 2,000 sampled profiles."""
        from dmd_torch.description import Description, markdown_table
        from dmd_torch.exact import policy_occupancy

        types = self.checked_sample(2000, torch.Generator().manual_seed(0)).to(ama.boosts.device)
        shares, spans = [], []
        for mech in (ama, type(ama).vcg(self).to(ama.boosts.device)):
            out = mech.outcome(types)
            workers = policy_occupancy(self.mdp, out.policy).path % self.mdp.num_actions  # [B, T]
            shares.append(torch.stack([(workers == i).double().mean(0) for i in range(self.n_agents)], -1).cpu())
            spans.append(float(out.objective.mean()))
        rows = [(t + 1, *[f"{float(shares[0][t, i]):.2f} ({float(shares[1][t, i]):.2f})" for i in range(self.n_agents)])
                for t in range(self.size)]
        fig = Figure(figsize=(6.5, 3.6))
        axes = fig.subplots(1, 2, sharey=True)
        for ax, share, span, label in zip(axes, shares, spans, ("AMA", "VCG")):
            bottom = torch.zeros(self.size, dtype=torch.float64)
            for i in range(self.n_agents):
                ax.bar(range(1, self.size + 1), share[:, i].tolist(), bottom=bottom.tolist(), label=f"worker {i + 1}")
                bottom = bottom + share[:, i]
            ax.set_title(f"{label}: makespan {span:.4f}", fontsize=10)
            ax.set_xlabel("task")
        axes[0].set_ylabel("share of profiles")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        return Description(
            f"AMA on {self.report_key} ({self.n_agents} workers, {self.size} tasks)",
            [f"Mean makespan on 2,000 sampled profiles: {spans[0]:.4f} under the AMA, {spans[1]:.4f} under VCG "
             "(which gives every task to the cheapest worker). Share of profiles in which each worker gets each "
             "task, AMA (VCG):",
             markdown_table(["task", *[f"worker {i + 1}" for i in range(self.n_agents)]], rows)],
            fig,
        )

    def loss_vector(self, types: torch.Tensor) -> torch.Tensor:
        """Makespan of each terminal state-action pair ``q[B, S, A]`` (zero elsewhere)."""
        B, n, T = types.shape
        S, A = self.mdp.shape
        dev = types.device
        onehot = torch.eye(n, dtype=types.dtype, device=dev)
        # The same queue rule as queue_makespan, one tree level at a time: R after each history
        # is the parent's R after one more task, so shared prefixes are simulated once.
        R = types.new_zeros(B, S, n)
        for d in range(1, T):
            idx = self._by_depth[d].to(dev)
            added = onehot[self._last_worker[idx].to(dev)] * types[:, None, :, d - 1]  # [B, L, n]
            R[:, idx] = _queue_step(R[:, self._parent[idx].to(dev)], added, self.clamped)
        last = self._terminal_states.to(dev)
        added = onehot * types[:, None, :, T - 1]  # action a assigns the last task to worker a: [B, A, n]
        final = _queue_step(R[:, last].unsqueeze(2), added.unsqueeze(1), self.clamped)  # [B, L, A, n]
        q = torch.zeros(B, S, A, dtype=types.dtype, device=dev)
        q[:, last] = final.amax(-1).clamp(min=0.0)
        return q


def _queue_step(R: torch.Tensor, added: torch.Tensor, clamped: bool) -> torch.Tensor:
    """One task of the queue rule: busy workers work one unit, then the assigned worker's work grows."""
    R = torch.where(R > 0, R - 1.0, R)
    if clamped:
        R = R.clamp(min=0.0)
    return R + added
