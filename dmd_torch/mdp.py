"""Tabular Markov decision processes, batched over reward tensors.

A :class:`TabularMDP` is the environment of the paper's section 3 without rewards: states ``S``,
actions ``A``, a (sparse) transition kernel ``P(s' | s, a)``, an initial distribution ``mu0`` and
either a finite horizon (the graph of transitions is acyclic; missing probability mass ends the
episode) or a discount ``gamma < 1``. Rewards are supplied separately as ``c[B, S, A]`` to the
solvers in :mod:`dmd_torch.exact` and :mod:`dmd_torch.regularized`.

Transitions are stored in a padded sparse form: ``next_states[s, a, k]`` and ``next_probs[s, a, k]``
list the ``K`` possible successors of ``(s, a)``; unused slots (and terminal transitions) carry
probability zero. The flow constraints of the occupancy LP (paper, equation 2) read ``M nu = mu0``
with ``M[s, (s', a')] = 1{s = s'} - gamma * P(s | s', a')``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch

from dmd_torch import checks

__all__ = ["TabularMDP", "pick"]

_PROB_TOL = 1e-9


def pick(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[..., index]`` for a 1-D ``index``: a gather with the index broadcast over the leading
    dimensions (on CPU several times faster than ``index_select`` along the last dimension when
    that dimension is short, e.g. the states of a small MDP)."""
    lead = x.shape[:-1]
    return x.gather(-1, index.view(*(1,) * len(lead), -1).expand(*lead, -1))


@dataclass(eq=False)
class TabularMDP:
    """A finite MDP without rewards.

    Attributes:
        state_labels: One hashable, human-readable label per state (e.g. a history tuple).
        action_labels: One label per action.
        next_states: Long tensor ``[S, A, K]`` of successor indices.
        next_probs: Tensor ``[S, A, K]`` of successor probabilities; a row may sum to less than one
            only in a finite-horizon MDP (the rest of the mass terminates the episode).
        mu0: Initial state distribution ``[S]``.
        gamma: Discount factor in ``(0, 1]``; ``1`` requires an acyclic (finite-horizon) MDP.
        levels: For acyclic MDPs, state indices grouped by height (the number of decisions left,
            minus one): every successor of a state at height ``h`` has height ``< h``. ``None`` for
            MDPs with cycles. Computed on construction.
    """

    state_labels: list[Hashable]
    action_labels: list[Hashable]
    next_states: torch.Tensor
    next_probs: torch.Tensor
    mu0: torch.Tensor
    gamma: float = 1.0
    levels: list[torch.Tensor] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.state_labels = list(self.state_labels)
        self.action_labels = list(self.action_labels)
        S, A = len(self.state_labels), len(self.action_labels)
        if S < 1 or A < 1:
            raise ValueError(f"an MDP needs at least one state and one action, got S={S}, A={A}")
        if len(set(self.state_labels)) != S:
            raise ValueError("state labels must be unique")
        if len(set(self.action_labels)) != A:
            raise ValueError("action labels must be unique")
        ns, npr = self.next_states, self.next_probs
        if ns.dim() == 2:
            ns, npr = ns.unsqueeze(-1), npr.unsqueeze(-1)
        if ns.shape[:2] != (S, A) or npr.shape != ns.shape:
            raise ValueError(
                f"next_states and next_probs must both have shape [S, A, K] = [{S}, {A}, K], "
                f"got {tuple(ns.shape)} and {tuple(npr.shape)}"
            )
        self.next_states = ns.long()
        self.next_probs = npr if npr.is_floating_point() else npr.to(torch.float64)
        self.mu0 = self.mu0.to(self.next_probs)
        if self.mu0.shape != (S,):
            raise ValueError(f"mu0 must have shape [S] = [{S}], got {tuple(self.mu0.shape)}")
        if ((self.next_states < 0) | (self.next_states >= S)).any():
            raise ValueError(f"next_states must lie in 0..{S - 1}")
        for name, t in (("next_probs", self.next_probs), ("mu0", self.mu0)):
            if not checks.all_finite(t) or (t < 0).any():
                raise ValueError(f"{name} must be finite and non-negative")
        row = self.next_probs.sum(-1)
        if (row > 1 + _PROB_TOL).any():
            raise ValueError("transition probabilities of a state-action pair sum to more than 1")
        if abs(float(self.mu0.sum()) - 1.0) > 1e-9:
            raise ValueError(f"mu0 must sum to 1, got {float(self.mu0.sum())}")
        if not (0.0 < self.gamma <= 1.0):
            raise ValueError(f"gamma must lie in (0, 1], got {self.gamma}")
        self.levels = self._compute_levels()
        if self.gamma < 1.0:
            if ((row - 1).abs() > _PROB_TOL).any() and self.levels is None:
                raise ValueError("a discounted MDP with cycles must have transition rows summing to 1")
        elif self.levels is None:
            raise ValueError(
                "the MDP has cycles, so it needs a discount gamma in (0, 1); got gamma = 1"
            )

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def deterministic(
        cls,
        state_labels: Sequence[Hashable],
        action_labels: Sequence[Hashable],
        next_state: torch.Tensor,
        start: int = 0,
        gamma: float = 1.0,
    ) -> TabularMDP:
        """Builds a deterministic MDP; ``next_state[s, a] = -1`` marks a terminal transition."""
        next_state = torch.as_tensor(next_state, dtype=torch.long)
        probs = (next_state >= 0).to(torch.float64)
        mu0 = torch.zeros(len(state_labels), dtype=probs.dtype)
        mu0[start] = 1.0
        return cls(state_labels, action_labels, next_state.clamp(min=0), probs, mu0, gamma)

    @classmethod
    def from_dense(
        cls,
        P: torch.Tensor,
        mu0: torch.Tensor,
        gamma: float = 1.0,
        state_labels: Sequence[Hashable] | None = None,
        action_labels: Sequence[Hashable] | None = None,
    ) -> TabularMDP:
        """Builds an MDP from a dense kernel ``P[s, a, s']`` (rows may sum to < 1 if acyclic)."""
        S, A, _ = P.shape
        K = max(int((P > 0).sum(-1).max()), 1)
        probs, idx = P.topk(K, dim=-1)
        return cls(
            list(range(S)) if state_labels is None else state_labels,
            list(range(A)) if action_labels is None else action_labels,
            idx,
            probs,
            mu0,
            gamma,
        )

    def _compute_levels(self) -> list[torch.Tensor] | None:
        """Groups states by height with Kahn's algorithm on the reversed graph; None if cyclic."""
        S = self.num_states
        edges = (self.next_probs > 0).nonzero()  # rows (s, a, k)
        src = edges[:, 0]
        dst = self.next_states[edges[:, 0], edges[:, 1], edges[:, 2]]
        pairs = torch.unique(torch.stack([src, dst], 1), dim=0)
        if (pairs[:, 0] == pairs[:, 1]).any():
            return None
        out_deg = torch.bincount(pairs[:, 0], minlength=S)
        height = torch.full((S,), -1, dtype=torch.long)
        frontier = (out_deg == 0).nonzero().flatten()
        levels = []
        h = 0
        remaining = out_deg.clone()
        while frontier.numel():
            height[frontier] = h
            levels.append(frontier)
            parents = pairs[torch.isin(pairs[:, 1], frontier), 0]
            remaining -= torch.bincount(parents, minlength=S)
            frontier = ((remaining == 0) & (height < 0)).nonzero().flatten()
            h += 1
        if (height < 0).any():
            return None
        return levels

    # ------------------------------------------------------------------ properties
    @property
    def num_states(self) -> int:
        return len(self.state_labels)

    @property
    def num_actions(self) -> int:
        return len(self.action_labels)

    @property
    def shape(self) -> tuple[int, int]:
        """``(S, A)``."""
        return self.num_states, self.num_actions

    @cached_property
    def level_index(self) -> list[slice | torch.Tensor]:
        """``levels`` as slices where a level is a contiguous range of states (cheap views)."""
        out: list[slice | torch.Tensor] = []
        for lvl in self.levels or []:
            lo, hi = int(lvl.min()), int(lvl.max()) + 1
            contiguous = hi - lo == lvl.numel() and bool((lvl.sort().values == torch.arange(lo, hi, device=lvl.device)).all())
            out.append(slice(lo, hi) if contiguous else lvl)
        return out

    @cached_property
    def level_plan(self) -> list[tuple[slice | torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
        """Per height level (leaves first): its states, their successors and the discounted weights.

        Each entry is ``(idx, next_states[idx] [L, A, K], gamma * next_probs[idx] [L, A, K])`` for
        backward induction ``Q = c + sum_k gamma P V(next)``. At height 0 every action terminates, so
        both are ``None``; elsewhere the weights are ``None`` where every successor is the single
        one with ``gamma * P = 1`` (the common deterministic finite-horizon case): no multiply needed.
        """
        plan: list[tuple[slice | torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
        for h, idx in enumerate(self.level_index):
            if h == 0:
                plan.append((idx, None, None))
                continue
            ns, pr = self.next_states[idx], self.gamma * self.next_probs[idx]
            unit = ns.shape[-1] == 1 and bool((pr == 1).all())
            plan.append((idx, ns, None if unit else pr))
        return plan

    @cached_property
    def heights(self) -> torch.Tensor | None:
        """Each state's height ``[S]`` (its index in :attr:`levels`), or ``None`` for MDPs with cycles."""
        if self.levels is None:
            return None
        height = torch.empty(self.num_states, dtype=torch.long, device=self.device)
        for h, lvl in enumerate(self.levels):
            height[lvl] = h
        return height

    @cached_property
    def path_start(self) -> int | None:
        """The start state where every trajectory is a single path through all height levels, else ``None``.

        That holds for an acyclic MDP with deterministic transitions whose ``mu0`` is a point mass on
        the top level's state and whose every action at height ``h > 0`` leads to a state at height
        ``h - 1`` (at height 0 every action ends the episode), e.g. MDPs whose states are histories. A
        deterministic policy then visits one state per level, so its occupancy is a path of
        ``len(levels)`` state-action pairs (:func:`dmd_torch.exact.policy_occupancy`).
        """
        height = self.heights
        if height is None or self.levels is None or not self.is_deterministic:
            return None
        start = int(self.mu0.argmax())
        if float(self.mu0[start]) != 1.0 or start not in self.levels[-1].tolist():
            return None
        inner = height > 0
        probs, succ = self.next_probs[inner, :, 0], self.next_states[inner, :, 0]
        if not bool((probs == 1.0).all()) or not bool((height[succ] == height[inner].unsqueeze(-1) - 1).all()):
            return None
        return start

    @property
    def is_deterministic(self) -> bool:
        """True when every state-action pair has at most one successor (``K = 1``)."""
        return self.next_states.shape[-1] == 1

    @property
    def is_acyclic(self) -> bool:
        return self.levels is not None

    @property
    def device(self) -> torch.device:
        return self.next_probs.device

    @property
    def dtype(self) -> torch.dtype:
        return self.next_probs.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TabularMDP:
        """Returns a copy on ``device`` with floating tensors in ``dtype``."""
        out = TabularMDP(
            self.state_labels,
            self.action_labels,
            self.next_states.to(device),
            self.next_probs.to(device=device, dtype=dtype),
            self.mu0.to(device=device, dtype=dtype),
            self.gamma,
        )
        return out

    # ------------------------------------------------------------------ linear algebra
    @cached_property
    def unit_transitions(self) -> bool:
        """True when every state-action pair has one successor with probability one (no terminal pairs)."""
        return self.is_deterministic and bool((self.next_probs == 1.0).all())

    def expected_next(self, V: torch.Tensor) -> torch.Tensor:
        """Returns ``sum_s' P(s'|s,a) V[..., s']`` with shape ``[..., S, A]`` (no discount)."""
        S, A, K = self.next_states.shape
        nxt = pick(V, self.next_states.flatten()).view(*V.shape[:-1], S, A, K)
        if K == 1:
            return nxt.squeeze(-1) if self.unit_transitions else nxt.squeeze(-1) * self.next_probs.squeeze(-1)
        return (nxt * self.next_probs).sum(-1)

    def q_values(self, c: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """One Bellman backup: ``Q = c + gamma * sum_s' P(s'|s,a) V[..., s']``, shape ``[..., S, A]``."""
        S, A, K = self.next_states.shape
        if self.unit_transitions:  # e.g. the gridworld: one fused add, no temporaries
            nxt = pick(V, self.next_states.flatten()).view(*V.shape[:-1], S, A)
            return torch.add(c, nxt, alpha=self.gamma)
        return c + self.gamma * self.expected_next(V)

    def inflow(self, nu: torch.Tensor) -> torch.Tensor:
        """Returns ``sum_{s',a'} P(s|s',a') nu[..., s', a']`` with shape ``[..., S]``."""
        flat = (nu.unsqueeze(-1) * self.next_probs).flatten(-3)
        out = torch.zeros(*nu.shape[:-2], self.num_states, dtype=nu.dtype, device=nu.device)
        return out.index_add_(-1, self.next_states.flatten(), flat)

    def dense_transitions(self) -> torch.Tensor:
        """The dense kernel ``P[s, a, s']``."""
        S, A = self.shape
        P = torch.zeros(S, A, S, dtype=self.dtype, device=self.device)
        return P.scatter_add_(-1, self.next_states, self.next_probs)

    def flow_matrix(self) -> torch.Tensor:
        """The sparse flow-constraint matrix ``M[s, (s', a')] = 1{s=s'} - gamma P(s|s',a')``.

        Columns are state-action pairs in row-major order ``s' * A + a'``; the constraints of the
        occupancy LP (paper, equation 2) are ``M nu = mu0``.
        """
        S, A = self.shape
        K = self.next_states.shape[-1]
        cols = torch.arange(S * A, device=self.device)
        diag_rows = cols // A
        rows = torch.cat([diag_rows, self.next_states.flatten()])
        cols = torch.cat([cols, cols.repeat_interleave(K)])
        vals = torch.cat(
            [torch.ones(S * A, dtype=self.dtype, device=self.device), -self.gamma * self.next_probs.flatten()]
        )
        return torch.sparse_coo_tensor(
            torch.stack([rows, cols]), vals, (S, S * A), check_invariants=True
        ).coalesce()

    def check_rewards(self, c: torch.Tensor, name: str = "c", check_finite: bool = True) -> torch.Tensor:
        """Validates a reward tensor ``[..., S, A]`` (shape and, optionally, finiteness) and returns it."""
        if not isinstance(c, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(c).__name__}")
        if c.dim() < 2 or tuple(c.shape[-2:]) != self.shape:
            raise ValueError(
                f"{name} must have shape [..., S, A] = [..., {self.num_states}, {self.num_actions}], "
                f"got {tuple(c.shape)}"
            )
        return checks.check_finite(name, c) if check_finite else c
