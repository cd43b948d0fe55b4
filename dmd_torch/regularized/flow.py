"""Flow algebra of the occupancy constraints ``M nu = mu0``, shared by the regularized backends.

``M[s, (s', a')] = 1{s = s'} - gamma P(s | s', a')`` (:meth:`~dmd_torch.mdp.TabularMDP.flow_matrix`).
Besides ``M x``, ``M^T x`` and ``M diag(w) M^T``, this module holds the implicit-function gradient of
the regularized solution map (paper, Appendix E, equation 13): at the optimum
``nu = exp((c - M^T V) / alpha - 1)`` and ``M nu = mu0``, so with ``D = diag(nu) / alpha`` and
``H = M D M^T`` the vector-Jacobian product is ``dL/dc = D g - D M^T H^{-1} M D g`` for
``g = dL/dnu`` (:func:`implicit_occupancy_vjp`). Per-MDP structure is cached for as long as the
MDP lives (:func:`mdp_cache`).
"""

from __future__ import annotations

import math
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
    "flow_hessian",
    "solve_flow_system",
    "flow_newton_solve",
    "HESSIAN_CHUNK_BYTES",
    "implicit_occupancy_vjp",
    "attach_implicit_grad",
    "FlowStructure",
    "entries",
    "name_entries",
    "format_values",
    "EPS",
    "TINY",
]

EPS = float(torch.finfo(torch.float64).eps)
TINY = 1e-280
"""Curvatures (and occupancies) below this count as zero: the flow underflowed."""
HESSIAN_CHUNK_BYTES = 16 * 2**20
"""Largest block of Newton matrices formed at once by :func:`flow_newton_solve`."""
_NEGLIGIBLE = 1e-20  # states with curvature (or outflow) below this fraction of the largest are left out

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
# M x, M^T x, M diag(w) M^T and the implicit gradient
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


def flow_hessian(mdp: TabularMDP, w: torch.Tensor) -> torch.Tensor:
    """``H = M diag(w) M^T`` for weights ``w[B, S, A]``, as a dense ``[B, S, S]`` matrix (one scatter-add)."""
    B, S, _ = w.shape
    fs = flow_structure(mdp)
    H = torch.zeros(B, S * S, dtype=w.dtype, device=w.device)
    H.index_add_(1, fs.h_index, (w.unsqueeze(-1) * fs.h_coef).flatten(1))
    return H.view(B, S, S)


def solve_flow_system(H: torch.Tensor, rhs: torch.Tensor, alive: torch.Tensor | None = None) -> torch.Tensor:
    """Solves ``H x = rhs`` for the positive semi-definite ``H = M D M^T``, batched; ``H`` is overwritten.

    Occupancies span hundreds of orders of magnitude at small alpha, so ``H`` is symmetrically
    rescaled by its diagonal (Jacobi) before a Cholesky solve. Only the ``alive`` states take part;
    the others get ``x = 0``. By default a state is alive unless its curvature is negligible (below
    ``1e-20`` of the largest, or underflowed: hardly any flow enters or leaves it, so its flow
    residual is negligible too). Falls back to least squares for the entries where Cholesky fails.
    The rescaling works in place and the factor is applied by two triangular solves (on CPU both
    cost a fraction of the copies of ``cholesky_solve``: 3x less at 222 states).
    """
    diag = H.diagonal(dim1=-2, dim2=-1)
    if alive is None:
        alive = diag > _NEGLIGIBLE * diag.amax(-1, keepdim=True)
    alive = alive & (diag > TINY)
    scale = torch.where(alive, diag.clamp_min(TINY).rsqrt(), torch.zeros_like(diag))
    Hs = H.mul_(scale.unsqueeze(-1)).mul_(scale.unsqueeze(-2))
    Hs.diagonal(dim1=-2, dim2=-1).add_((~alive).to(H.dtype))
    b = (rhs * scale).unsqueeze(-1)
    L, info = torch.linalg.cholesky_ex(Hs)
    ok = info == 0
    if ok.all():
        x = _cholesky_apply(L, b)
    else:
        x = torch.full_like(b, math.nan)  # stays NaN where H itself is not finite
        x[ok] = _cholesky_apply(L[ok], b[ok])
        redo = ~ok & torch.isfinite(Hs).all(-1).all(-1) & torch.isfinite(b).all(-1).all(-1)
        if redo.any():
            x[redo] = torch.linalg.lstsq(Hs[redo], b[redo]).solution
    return x.squeeze(-1) * scale


def flow_newton_solve(
    mdp: TabularMDP,
    w: torch.Tensor,
    rhs: torch.Tensor,
    alive: torch.Tensor | None = None,
    chunk_bytes: int = HESSIAN_CHUNK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` solving ``M diag(w) M^T x = rhs`` (:func:`flow_hessian`, :func:`solve_flow_system`), and the
    diagonal of that matrix, ``[B, S]`` each.

    The batch goes through in chunks whose matrices take at most ``chunk_bytes``: a
    larger block would come from a fresh ``mmap`` each time (glibc's threshold stops at 32 MiB)
    and page-fault in again (docs/benchmarks.md, "The Newton systems").
    """
    B, S, _ = w.shape
    chunk = max(1, chunk_bytes // (S * S * w.element_size()))
    xs, diags = [], []
    for k in range(0, B, chunk):
        H = flow_hessian(mdp, w[k:k + chunk])
        diags.append(H.diagonal(dim1=-2, dim2=-1).clone())  # the solve overwrites H
        xs.append(solve_flow_system(H, rhs[k:k + chunk], None if alive is None else alive[k:k + chunk]))
    if len(xs) == 1:
        return xs[0], diags[0]
    return torch.cat(xs), torch.cat(diags)


def _cholesky_apply(L: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(L L^T)^-1 b`` by forward and back substitution."""
    y = torch.linalg.solve_triangular(L, b, upper=False)
    return torch.linalg.solve_triangular(L.mT, y, upper=True)


def implicit_occupancy_vjp(mdp: TabularMDP, nu: torch.Tensor, alpha: float, grad: torch.Tensor) -> torch.Tensor:
    """Vector-Jacobian product of the regularized solution map ``c -> nu`` at an optimum.

    Implicit function theorem on the optimality conditions ``c - alpha (log nu + 1) - M^T V = 0``,
    ``M nu = mu0``: with ``D = diag(nu) / alpha``, ``dL/dc = D g - D M^T (M D M^T)^{-1} M D g``.

    Args:
        mdp: The MDP.
        nu: Optimal occupancies ``[B, S, A]`` (non-negative).
        alpha: The entropy weight.
        grad: ``g = dL/dnu``, shape ``[B, S, A]``.

    Returns:
        ``dL/dc`` with shape ``[B, S, A]``.
    """
    # Entries without an incoming gradient (e.g. problems read by the envelope theorem only) give 0.
    some = (grad != 0).flatten(1).any(-1)
    if not some.all():
        out = torch.zeros_like(nu)
        if some.any():
            out[some] = implicit_occupancy_vjp(mdp, nu[some], alpha, grad[some])
        return out
    w = nu / alpha
    dg = w * grad
    # States with negligible outflow carry no weight in the result; leaving them out also keeps H
    # well conditioned when nu comes from a solver whose tiniest entries are noise.
    outflow = nu.sum(-1)
    alive = outflow > _NEGLIGIBLE * outflow.amax(-1, keepdim=True)
    x = flow_newton_solve(mdp, w, flow(mdp, dg), alive)[0]
    return dg - w * flow_transpose(mdp, x)


class _ImplicitOccupancy(torch.autograd.Function):
    """Identity on a precomputed optimum ``nu`` whose backward is :func:`implicit_occupancy_vjp`."""

    @staticmethod
    def forward(ctx: Any, c: torch.Tensor, nu: torch.Tensor, mdp: TabularMDP, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(nu)
        ctx.mdp, ctx.alpha = mdp, alpha
        return nu.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (nu,) = ctx.saved_tensors
        return implicit_occupancy_vjp(ctx.mdp, nu, ctx.alpha, grad), None, None, None


def attach_implicit_grad(mdp: TabularMDP, c: torch.Tensor, nu: torch.Tensor, alpha: float) -> torch.Tensor:
    """``nu`` as a function of ``c`` whose backward is :func:`implicit_occupancy_vjp` (where ``c`` needs one)."""
    if not (torch.is_grad_enabled() and c.requires_grad):
        return nu
    return _ImplicitOccupancy.apply(c, nu.detach(), mdp, alpha)


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

