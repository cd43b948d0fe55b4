"""Flow algebra of the occupancy constraints ``M nu = mu0``, shared by the regularized backends.

``M[s, (s', a')] = 1{s = s'} - gamma P(s | s', a')`` (:meth:`~dmd_torch.mdp.TabularMDP.flow_matrix`).
This module holds ``M x`` and ``M^T x``, the index structure that assembles ``M diag(w) M^T`` (whose
systems, and the implicit gradient built on them, are :mod:`~dmd_torch.regularized.systems`), and
the solvers' error type and messages. Per-MDP structure is cached for as long as the MDP lives
(:func:`mdp_cache`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dmd_torch.mdp import TabularMDP

__all__ = [
    "RegularizedSolveError",
    "mdp_cache",
    "flow_structure",
    "flow",
    "flow_residual",
    "flow_transpose",
    "FlowStructure",
    "entries",
    "name_entries",
    "format_values",
    "EPS",
    "TINY",
    "NEGLIGIBLE",
]

EPS = float(torch.finfo(torch.float64).eps)
TINY = 1e-280
"""Curvatures (and occupancies) below this count as zero: the flow underflowed."""
NEGLIGIBLE = 1e-20
"""States whose curvature (or outflow) is below this fraction of the largest are left out of a Newton system."""

class RegularizedSolveError(RuntimeError):
    """A backend did not solve some batch entries; ``entries`` lists their (leading) indices."""

    def __init__(self, message: str, entries: list[Any]) -> None:
        super().__init__(message)
        self.entries = entries


# ---------------------------------------------------------------------------------------------
# per-MDP structure (computed once, kept as long as the MDP lives)
# ---------------------------------------------------------------------------------------------
_CACHE: weakref.WeakKeyDictionary[TabularMDP, dict[str, Any]] = weakref.WeakKeyDictionary()


def mdp_cache(mdp: TabularMDP) -> dict[str, Any]:
    """A dictionary of per-MDP structure, dropped with the MDP."""
    return _CACHE.setdefault(mdp, {})


@dataclass(frozen=True)
class FlowStructure:
    """Index tensors that assemble ``M diag(w) M^T`` by one scatter-add, and the reachable states."""

    reach: torch.Tensor  # [S] bool: states with positive occupancy
    h_index: torch.Tensor  # [S*A*(K+1)^2] flat index into H of each term of column (s, a) of M
    h_coef: torch.Tensor  # [S, A, (K+1)^2] its coefficient: products of M's entries in that column
    log_gp: torch.Tensor  # [S, A, K] log(gamma * P) (-inf on padding)
    temper: torch.Tensor  # [S] expected remaining (discounted) decisions under the uniform policy


def flow_structure(mdp: TabularMDP) -> FlowStructure:
    """The scatter indices, reachable states and temperatures of ``mdp`` (cached)."""
    cache = mdp_cache(mdp)
    if "flow" in cache:
        return cache["flow"]
    S, A = mdp.shape
    ns, p = mdp.next_states, mdp.next_probs
    gp = mdp.gamma * p
    s_idx = torch.arange(S, device=mdp.device).view(S, 1, 1).expand_as(ns)
    # Reachable states: closure of supp(mu0) under positive-probability transitions.
    adj = torch.zeros(S, S, dtype=torch.bool, device=mdp.device)
    adj[s_idx[p > 0], ns[p > 0]] = True
    reach = mdp.mu0 > 0
    while True:
        new = reach | adj[reach].any(0)
        if torch.equal(new, reach):
            break
        reach = new
    if mdp.levels is not None:
        temper = torch.zeros(S, dtype=mdp.dtype, device=mdp.device)
        for lvl in mdp.levels:
            temper[lvl] = 1.0 + mdp.gamma * (temper[ns[lvl]] * p[lvl]).sum(-1).mean(-1)
    else:
        P_unif = mdp.dense_transitions().mean(1)
        eye = torch.eye(S, dtype=mdp.dtype, device=mdp.device)
        temper = torch.linalg.solve(eye - mdp.gamma * P_unif, torch.ones(S, dtype=mdp.dtype, device=mdp.device))
    # Column (s, a) of M has 1 at row s and -gamma P_k at rows s'_k; H sums w(s, a) times the
    # outer product of each column with itself.
    rows = torch.cat([s_idx[..., :1], ns], -1)  # [S, A, K + 1]
    vals = torch.cat([torch.ones_like(gp[..., :1]), -gp], -1)
    out = FlowStructure(
        reach=reach,
        h_index=(rows.unsqueeze(-1) * S + rows.unsqueeze(-2)).flatten(),
        h_coef=(vals.unsqueeze(-1) * vals.unsqueeze(-2)).flatten(-2),
        log_gp=gp.log(),
        temper=temper,
    )
    cache["flow"] = out
    return out


# ---------------------------------------------------------------------------------------------
# M x and M^T x
# ---------------------------------------------------------------------------------------------
def flow(mdp: TabularMDP, x: torch.Tensor) -> torch.Tensor:
    """``M x`` for ``x[..., S, A]``: ``sum_a x(s, a) - gamma sum_{s',a'} P(s|s',a') x(s', a')``."""
    return x.sum(-1) - mdp.gamma * mdp.inflow(x)


def flow_residual(mdp: TabularMDP, nu: torch.Tensor) -> torch.Tensor:
    """The flow-constraint residual ``M nu - mu0`` with shape ``[..., S]``."""
    return flow(mdp, nu) - mdp.mu0


def flow_transpose(mdp: TabularMDP, x: torch.Tensor) -> torch.Tensor:
    """``M^T x`` for ``x[B, S]``: ``x(s) - gamma sum_s' P(s'|s,a) x(s')``, shape ``[B, S, A]``."""
    return x.unsqueeze(-1) - mdp.gamma * mdp.expected_next(x)


# ---------------------------------------------------------------------------------------------
# error-message helpers
# ---------------------------------------------------------------------------------------------
def entries(bad: torch.Tensor, lead: tuple[int, ...]) -> list[Any]:
    """The batch entries where ``bad`` holds, as indices into the leading dimensions ``lead``."""
    flat = bad.nonzero().flatten().cpu().numpy()
    if len(lead) <= 1:
        return [int(i) for i in flat]
    return [tuple(int(j) for j in np.unravel_index(i, lead)) for i in flat]


def name_entries(bad: torch.Tensor, lead: tuple[int, ...], limit: int = 10) -> str:
    """Up to ``limit`` of those entries and their count, for an error message."""
    items = entries(bad, lead)
    shown = ", ".join(map(str, items[:limit]))
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)} of {int(bad.numel())})"


def format_values(x: torch.Tensor, limit: int = 5) -> str:
    """Up to ``limit`` values to three significant digits, for an error message."""
    vals = [f"{float(v):.3g}" for v in x.flatten()[:limit]]
    return "[" + ", ".join(vals) + (", ...]" if x.numel() > limit else "]")

