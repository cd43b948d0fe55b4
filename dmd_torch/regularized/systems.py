"""The Newton systems ``H x = r``, ``H = M diag(w) M^T``, of the regularized follower, and the implicit gradient.

``H`` is the Hessian of the dual of the paper's equation 13 (with ``w = nu / alpha``); the dual
Newton step (:mod:`~dmd_torch.regularized.newton`) and the implicit-function gradient solve with it.
:func:`flow_newton_solve` solves a batch, one of two ways:

* **dense**: ``H`` formed as a ``[B, S, S]`` matrix, Jacobi-scaled, then Cholesky
  (:func:`solve_flow_system`);
* **leaves first** (:class:`LeafElimination`), on acyclic MDPs: the states whose every action ends
  the episode meet in ``H`` only through the state-action pairs that lead to them, so ``H_LL`` is
  block diagonal over the connected components of that relation (at most 5 states per block on
  the dynamic matching MDPs, 1 on history trees). Eliminating them first,
  ``(H_NN - H_NL H_LL^-1 H_LN) x_N = r_N - H_NL H_LL^-1 r_L`` and ``x_L = H_LL^-1 (r_L - H_LN x_N)``,
  leaves a dense system over the other states only (222 instead of 797 on matching with 4 agents
  and 4 rounds). This is Cholesky's method with the leaves ordered first, after the same Jacobi
  scaling, so it solves the same system to rounding; a problem on which it fails is solved densely.

The implicit gradient (paper, Appendix E, equation 13): at the optimum
``nu = exp((c - M^T V) / alpha - 1)`` and ``M nu = mu0``, so with ``D = diag(nu) / alpha`` the
vector-Jacobian product is ``dL/dc = D g - D M^T H^{-1} M D g`` for ``g = dL/dnu``
(:func:`implicit_occupancy_vjp`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from dmd_torch.mdp import TabularMDP
from dmd_torch.regularized.flow import NEGLIGIBLE, TINY, flow, flow_structure, flow_transpose, mdp_cache

__all__ = [
    "HESSIAN_CHUNK_BYTES",
    "flow_hessian",
    "solve_flow_system",
    "LeafElimination",
    "leaf_elimination",
    "flow_newton_solve",
    "implicit_occupancy_vjp",
    "attach_implicit_grad",
]

HESSIAN_CHUNK_BYTES = 16 * 2**20
"""Largest block of Newton matrices formed at once by :func:`flow_newton_solve`."""
_MAX_BLOCK = 32  # leaf blocks larger than this are not eliminated
_MIN_GAIN = 4.0  # eliminate the leaves where it cuts the factorization's flops at least this much
_MIN_STATES = 40  # below this the dense solve's fewer operations win (60 problems on matching: dense
# 1.3 ms against 2.6 ms at 37 states, 2.8 against 2.4 ms at 43, equal at 69, 11.1 against 4.9 ms at 100)


def flow_hessian(mdp: TabularMDP, w: torch.Tensor) -> torch.Tensor:
    """``H = M diag(w) M^T`` for weights ``w[B, S, A]``, as a dense ``[B, S, S]`` matrix (one scatter-add)."""
    B, S, _ = w.shape
    fs = flow_structure(mdp)
    H = torch.zeros(B, S * S, dtype=w.dtype, device=w.device)
    H.index_add_(1, fs.h_index, (w.unsqueeze(-1) * fs.h_coef).flatten(1))
    return H.view(B, S, S)


def _jacobi_scale(diag: torch.Tensor, alive: torch.Tensor | None) -> torch.Tensor:
    """``diag^(-1/2)`` on the states taking part in the system, 0 on the others (:func:`solve_flow_system`)."""
    if alive is None:
        alive = diag > NEGLIGIBLE * diag.amax(-1, keepdim=True)
    alive = alive & (diag > TINY)
    return torch.where(alive, diag.clamp_min(TINY).rsqrt(), torch.zeros_like(diag))


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
    scale = _jacobi_scale(H.diagonal(dim1=-2, dim2=-1), alive)
    Hs = H.mul_(scale.unsqueeze(-1)).mul_(scale.unsqueeze(-2))
    Hs.diagonal(dim1=-2, dim2=-1).add_((scale == 0).to(H.dtype))
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


@dataclass(frozen=True)
class LeafElimination:
    """Where the entries of ``H`` go when the leaves are eliminated first (module docstring).

    The pieces live in one buffer per problem: ``H_NN`` (``N x N``), the leaf blocks ``H_bb``
    (``nb`` blocks of ``k x k``, padded with unit diagonals) and the couplings ``H_Pb`` of each
    block with the ``p`` inner states it meets (padded with zeros).

    Attributes:
        inner: The states that are not leaves ``[N]``.
        leaves: The leaf blocks ``[nb, k]``, padded with ``S``.
        parents: Positions in ``inner`` of the states each block meets ``[nb, p]``, padded with 0.
        weight: The state-action pair of each term of ``H`` that lands in the pieces (the terms of
            :class:`~dmd_torch.regularized.flow.FlowStructure` with a nonzero coefficient) ``[E]``.
        target: Their positions in the buffer ``[E]``.
        coef: Their coefficients ``[E]``.
        update: Positions in ``H_NN`` of each block's ``p x p`` Schur update ``[nb p p]``.
    """

    inner: torch.Tensor
    leaves: torch.Tensor
    parents: torch.Tensor
    weight: torch.Tensor
    target: torch.Tensor
    coef: torch.Tensor
    update: torch.Tensor

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        """``(N, nb, k, p)``."""
        return self.inner.numel(), *self.leaves.shape, self.parents.shape[1]

    @property
    def buffer_size(self) -> int:
        """Entries of one problem's buffer."""
        N, nb, k, p = self.sizes
        return N * N + nb * k * (k + p)

    def solve(
        self, w: torch.Tensor, rhs: torch.Tensor, alive: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` solving ``H x = rhs`` with the leaves eliminated first, ``H``'s diagonal, and where
        both Cholesky factorizations succeeded ``[B]`` (elsewhere ``x`` is not to be used).

        The same Jacobi scaling and ``alive`` rule as :func:`solve_flow_system`.
        """
        B, S, _ = w.shape
        N, nb, k, p = self.sizes
        buf = w.new_zeros(B, self.buffer_size)
        buf.index_add_(1, self.target, w.flatten(1).index_select(1, self.weight) * self.coef)
        Hnn = buf[:, : N * N].view(B, N, N)
        Hbb = buf[:, N * N : N * N + nb * k * k].view(B, nb, k, k)
        Hpb = buf[:, N * N + nb * k * k :].view(B, nb, p, k)
        diag = w.new_zeros(B, S + 1)  # column S: the padding
        diag[:, self.inner] = Hnn.diagonal(dim1=-2, dim2=-1)
        diag[:, self.leaves.flatten()] = Hbb.diagonal(dim1=-2, dim2=-1).flatten(1)
        d = diag[:, :S]
        scale = w.new_zeros(B, S + 1)
        scale[:, :S] = _jacobi_scale(d, alive)
        s_n, s_b = scale[:, self.inner], scale[:, self.leaves]  # [B, N], [B, nb, k]
        s_p = s_n[:, self.parents]  # [B, nb, p]
        Hnn.mul_(s_n.unsqueeze(-1)).mul_(s_n.unsqueeze(-2)).diagonal(dim1=-2, dim2=-1).add_((s_n == 0).to(w.dtype))
        Hbb.mul_(s_b.unsqueeze(-1)).mul_(s_b.unsqueeze(-2)).diagonal(dim1=-2, dim2=-1).add_((s_b == 0).to(w.dtype))
        Hpb.mul_(s_p.unsqueeze(-1)).mul_(s_b.unsqueeze(-2))
        r = torch.cat([rhs, rhs.new_zeros(B, 1)], 1) * scale
        L_b, ok_b = _small_cholesky(Hbb)
        Y = _small_forward(L_b, Hpb.mT)  # L_b^-1 H_bP [B, nb, k, p]
        z = _small_forward(L_b, r[:, self.leaves].unsqueeze(-1))  # [B, nb, k, 1]
        Hnn.view(B, N * N).index_add_(1, self.update, (Y.mT @ Y).flatten(1), alpha=-1.0)  # the Schur complement
        r_n = r[:, self.inner].index_add(1, self.parents.flatten(), (Y.mT @ z).flatten(1), alpha=-1.0)
        L_n, info_n = torch.linalg.cholesky_ex(Hnn)
        x_n = _cholesky_apply(L_n, r_n.unsqueeze(-1))  # [B, N, 1]
        x_p = x_n.squeeze(-1)[:, self.parents].unsqueeze(-1)  # [B, nb, p, 1]
        x_b = _small_backward(L_b, z - Y @ x_p)  # [B, nb, k, 1]
        x = w.new_zeros(B, S + 1)
        x[:, self.inner] = x_n.squeeze(-1)
        x[:, self.leaves.flatten()] = x_b.flatten(1)  # the padding's entries are 0
        ok = ok_b.all(-1) & (info_n == 0)
        return (x * scale)[:, :S], d, ok


# Cholesky's method on many tiny matrices, one column at a time over the whole batch: for the
# [B, nb, 5, 5] leaf blocks of matching, torch.linalg.cholesky_ex takes 10 ms a call, most of it
# in its tril_ and per-matrix overhead, and solve_triangular 1.2 ms; these take a fraction of that.
def _small_cholesky(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The lower Cholesky factor of each ``A[..., k, k]``, and where it exists (positive pivots) ``[...]``."""
    k = A.shape[-1]
    L = torch.zeros_like(A)
    ok = torch.ones(A.shape[:-2], dtype=torch.bool, device=A.device)
    for j in range(k):
        row = L[..., j, :j]
        pivot = A[..., j, j] - (row * row).sum(-1)
        ok &= pivot > 0  # False on NaN too
        root = pivot.clamp_min(TINY).sqrt()
        L[..., j, j] = root
        if j + 1 < k:
            below = A[..., j + 1 :, j] - (L[..., j + 1 :, :j] * row.unsqueeze(-2)).sum(-1)
            L[..., j + 1 :, j] = below / root.unsqueeze(-1)
    return L, ok


def _small_forward(L: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``L^-1 b`` for lower-triangular ``L[..., k, k]`` and ``b[..., k, m]``, row by row."""
    y = torch.empty_like(b)
    for i in range(L.shape[-1]):
        acc = b[..., i, :] - (L[..., i, :i].unsqueeze(-1) * y[..., :i, :]).sum(-2)
        y[..., i, :] = acc / L[..., i, i].unsqueeze(-1)
    return y


def _small_backward(L: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``L^-T y`` for lower-triangular ``L[..., k, k]`` and ``y[..., k, m]``, row by row from the last."""
    k = L.shape[-1]
    x = torch.empty_like(y)
    for i in reversed(range(k)):
        acc = y[..., i, :] - (L[..., i + 1 :, i].unsqueeze(-1) * x[..., i + 1 :, :]).sum(-2)
        x[..., i, :] = acc / L[..., i, i].unsqueeze(-1)
    return x


def leaf_elimination(mdp: TabularMDP) -> LeafElimination | None:
    """The leaves-first structure of ``mdp``'s Newton systems (cached), or ``None`` where the dense
    solve is as good: MDPs with cycles, fewer than 40 states, leaf blocks of more than 32 states,
    or less than a 4x cut in the factorization's flops."""
    cache = mdp_cache(mdp)
    if "leaves" not in cache:
        cache["leaves"] = _leaf_elimination(mdp)
    return cache["leaves"]


def _leaf_elimination(mdp: TabularMDP) -> LeafElimination | None:
    S, A = mdp.shape
    if mdp.levels is None or S < _MIN_STATES:
        return None
    fs = flow_structure(mdp)
    K1 = mdp.next_states.shape[-1] + 1
    coef = fs.h_coef.flatten().cpu()
    live = (coef != 0).nonzero().flatten()  # the terms of H that are there
    flat = fs.h_index.cpu()[live]
    row, col = (flat // S).numpy(), (flat % S).numpy()
    is_leaf = np.zeros(S, dtype=bool)
    is_leaf[mdp.levels[0].cpu().numpy()] = True
    inner = np.flatnonzero(~is_leaf)
    leaf = np.flatnonzero(is_leaf)
    if not leaf.size:
        return None
    both = is_leaf[row] & is_leaf[col]
    pos = np.full(S, -1)
    pos[leaf] = np.arange(leaf.size)
    graph = coo_matrix((np.ones(int(both.sum())), (pos[row[both]], pos[col[both]])), shape=(leaf.size, leaf.size))
    nb, label = connected_components(graph, directed=False)
    sizes = np.bincount(label, minlength=nb)
    k = int(sizes.max())
    if k > _MAX_BLOCK:
        return None
    # each leaf's block and its place in it
    order = np.argsort(label, kind="stable")
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    slot = np.empty(leaf.size, dtype=np.int64)
    slot[order] = np.arange(leaf.size) - start[label[order]]
    block_of = np.full(S, -1)
    block_of[leaf] = label
    slot_of = np.full(S, -1)
    slot_of[leaf] = slot
    leaves = np.full((nb, k), S)
    leaves[label, slot] = leaf
    # the inner states each block meets (terms of H between an inner state and a leaf)
    inner_pos = np.full(S, -1)
    inner_pos[inner] = np.arange(inner.size)
    cross = ~is_leaf[row] & is_leaf[col]
    pairs = np.unique(np.stack([block_of[col[cross]], inner_pos[row[cross]]], 1), axis=0)
    counts = np.bincount(pairs[:, 0], minlength=nb)
    p = max(1, int(counts.max()) if pairs.size else 1)
    N = inner.size
    if N**3 / 3 + nb * (k**3 / 3 + k * k * p + k * p * p) > S**3 / 3 / _MIN_GAIN:
        return None
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    parents = np.zeros((nb, p), dtype=np.int64)
    p_slot = np.arange(len(pairs)) - first[pairs[:, 0]]
    parents[pairs[:, 0], p_slot] = pairs[:, 1]
    where = {(int(b), int(i)): int(j) for (b, i), j in zip(pairs, p_slot)}
    # each term's place in the buffer [H_NN | H_bb blocks | H_Pb blocks]; terms H_LN are the transposes of H_NL
    nn = ~is_leaf[row] & ~is_leaf[col]
    target = np.full(row.size, -1)
    target[nn] = inner_pos[row[nn]] * N + inner_pos[col[nn]]
    target[both] = N * N + (block_of[row[both]] * k + slot_of[row[both]]) * k + slot_of[col[both]]
    cross_p = np.array([where[(int(b), int(i))] for b, i in zip(block_of[col[cross]], inner_pos[row[cross]])], dtype=np.int64)
    target[cross] = N * N + nb * k * k + (block_of[col[cross]] * p + cross_p) * k + slot_of[col[cross]]
    keep = target >= 0
    entries = live.numpy()[keep]
    update = (parents[:, :, None] * N + parents[:, None, :]).reshape(-1)
    dev = mdp.device

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.long, device=dev)

    return LeafElimination(
        inner=tensor(inner),
        leaves=tensor(leaves),
        parents=tensor(parents),
        weight=tensor(entries // (K1 * K1)),
        target=tensor(target[keep]),
        coef=torch.as_tensor(coef.numpy()[entries], dtype=mdp.dtype, device=dev),
        update=tensor(update),
    )


def _dense_solve(
    mdp: TabularMDP, w: torch.Tensor, rhs: torch.Tensor, alive: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    H = flow_hessian(mdp, w)
    diag = H.diagonal(dim1=-2, dim2=-1).clone()  # the solve overwrites H
    return solve_flow_system(H, rhs, alive), diag


def flow_newton_solve(
    mdp: TabularMDP,
    w: torch.Tensor,
    rhs: torch.Tensor,
    alive: torch.Tensor | None = None,
    chunk_bytes: int = HESSIAN_CHUNK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` solving ``M diag(w) M^T x = rhs``, and the diagonal of that matrix, ``[B, S]`` each.

    With the leaves eliminated first where :func:`leaf_elimination` applies (a problem on which
    that fails is solved densely), else densely (:func:`flow_hessian`, :func:`solve_flow_system`).
    The batch goes through in chunks whose matrices take at most ``chunk_bytes``: a larger block
    would come from a fresh ``mmap`` each time (glibc's threshold stops at 32 MiB) and page-fault
    in again (docs/benchmarks.md, "The Newton systems").
    """
    B, S, _ = w.shape
    plan = leaf_elimination(mdp)
    per_problem = S * S if plan is None else max(plan.buffer_size, plan.weight.numel())
    chunk = max(1, chunk_bytes // (per_problem * w.element_size()))
    xs, diags = [], []
    for k in range(0, B, chunk):
        wk, rk = w[k : k + chunk], rhs[k : k + chunk]
        ak = None if alive is None else alive[k : k + chunk]
        if plan is None:
            x, diag = _dense_solve(mdp, wk, rk, ak)
        else:
            x, diag, ok = plan.solve(wk, rk, ak)
            if not ok.all():
                bad = (~ok).nonzero().flatten()
                x[bad] = _dense_solve(mdp, wk[bad], rk[bad], None if ak is None else ak[bad])[0]
        xs.append(x)
        diags.append(diag)
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
    alive = outflow > NEGLIGIBLE * outflow.amax(-1, keepdim=True)
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
