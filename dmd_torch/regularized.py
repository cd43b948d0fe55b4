"""The entropy-regularized follower problem and its derivative in the rewards.

The paper's first-order method (section 4, "Regularized linear program"; Appendix E, equation 13)
replaces the occupancy LP (equation 2) by the strictly concave program

    maximize_nu   sum_{s,a} c(s,a) nu(s,a) - alpha * sum_{s,a} nu(s,a) log nu(s,a)
    subject to    sum_a nu(s,a) = gamma * sum_{s',a'} P(s | s',a') nu(s',a') + mu0(s),   nu >= 0,

written ``M nu = mu0`` with the flow matrix of :meth:`TabularMDP.flow_matrix`. Its solution map
``c -> nu`` is smooth. :func:`regularized_occupancy` computes it for a batch of reward tensors with
one of three backends and differentiates it with autograd:

* ``"tree"``: a closed form for finite-horizon MDPs whose states are histories (deterministic
  transitions, one parent per state, all leaves at the same depth), e.g. sequential sales and
  scheduling. With ``d(s)`` the number of decisions left at ``s``,
  ``G(s) = alpha d(s) logsumexp_a((c(s,a) + G(child(s,a))) / (alpha d(s)))``, the policy is the
  matching softmax and ``nu`` follows by pushing the flow forward. Plain autograd differentiates it.
* ``"newton"``: any tabular MDP. Damped Newton on the smooth dual
  ``min_V mu0.V + alpha sum_{s,a} exp((c - M^T V)(s,a) / alpha - 1)``, whose minimizer gives
  ``nu = exp((c - M^T V) / alpha - 1)``; it is differentiated by the implicit function theorem.
* ``"cvxpylayers"``: the program above as a ``cvxpylayers`` ``CvxpyLayer`` (exponential cones), the
  route of the paper's reference implementation (MOSEK + DiffOpt). Its forward is the layer's; by
  default its backward is the same implicit-function gradient as ``"newton"``, because diffcp's
  derivative degenerates when occupancies are close to zero (small ``alpha``).

``"auto"`` picks ``"tree"`` where it applies and ``"newton"`` otherwise.

Implicit gradient: at the optimum ``nu = exp((c - M^T V)/alpha - 1)`` and ``M nu = mu0``, so with
``D = diag(nu) / alpha`` and ``H = M D M^T`` the vector-Jacobian product is
``dL/dc = D g - D M^T H^{-1} M D g`` for ``g = dL/dnu`` (:func:`implicit_occupancy_vjp`).
"""

from __future__ import annotations

import math
import numbers
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dmd_torch.mdp import TabularMDP

__all__ = [
    "BACKENDS",
    "RegularizedSolveError",
    "regularized_occupancy",
    "tree_applicable",
    "implicit_occupancy_vjp",
    "flow_residual",
]

BACKENDS = ("auto", "tree", "newton", "cvxpylayers")
"""Names accepted by the ``backend`` argument of :func:`regularized_occupancy`."""

NEWTON_TOL = 1e-12
"""Default tolerance of the Newton backend on ``max_s |M nu - mu0|_s / max(1, max_s sum_a nu(s, a))``."""
NEWTON_MAX_ITER = 100
"""Default Newton iteration limit."""
LAYER_CHECK_TOL = 1e-4
"""Default bound on the a-posteriori error estimate of the cvxpylayers solution (flow residual,
negativity and stationarity, relative to ``max(1, max_s sum_a nu(s, a))``). An interior-point
solution with duality gap ``g`` is only accurate to about ``sqrt(g nu / alpha)`` in ``nu``: with
Clarabel at tolerance ``1e-12`` typically ``1e-9``-``1e-6``, but ``~1e-5`` when it stalls
("AlmostSolved", which diffcp does not report) at ``alpha = 0.01``."""
LAYER_BACKWARD_MIN_ALPHA = 0.3
"""Below this alpha the layer's own (diffcp) derivative is known to be wrong; we warn."""
DEFAULT_LAYER_SOLVER_ARGS: dict[str, Any] = {
    "solve_method": "Clarabel",
    "tol_gap_abs": 1e-12,
    "tol_gap_rel": 1e-12,
    "tol_feas": 1e-12,
    "tol_ktratio": 1e-10,
    "max_iter": 500,
}
"""Solver settings of the cvxpylayers backend (Clarabel interior point, tight tolerances)."""

_SOFT_PI_MAX_ITER = 5  # soft policy iterations of the Newton warm start (MDPs with cycles; more cost more than they save)
_EPS = float(torch.finfo(torch.float64).eps)
_TINY = 1e-280  # curvatures (and occupancies) below this count as zero: the flow underflowed
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


def _cache(mdp: TabularMDP) -> dict[str, Any]:
    return _CACHE.setdefault(mdp, {})


@dataclass(frozen=True)
class _Tree:
    """Structure of a history tree: ``child[s, a]`` and the flat ``(s, a)`` index of each parent."""

    child: torch.Tensor  # [S, A] long (0 where terminal)
    parent_sa: torch.Tensor  # [S] long, -1 for the root


def _tree_structure(mdp: TabularMDP) -> _Tree | str:
    """The tree structure of ``mdp``, or a string saying why it is not a history tree."""
    cache = _cache(mdp)
    if "tree" in cache:
        return cache["tree"]
    cache["tree"] = out = _build_tree(mdp)
    return out


def _build_tree(mdp: TabularMDP) -> _Tree | str:
    S, A = mdp.shape
    if mdp.levels is None or mdp.gamma != 1.0:
        return "it is not a finite-horizon MDP (acyclic with gamma = 1)"
    pos = mdp.next_probs > 0
    if (pos.sum(-1) > 1).any() or ((mdp.next_probs[pos] - 1.0).abs() > 1e-12).any():
        return "its transitions are not deterministic"
    has_child = pos.any(-1)  # [S, A]
    k = pos.to(torch.int8).argmax(-1, keepdim=True)
    child = mdp.next_states.gather(-1, k).squeeze(-1) * has_child
    height = mdp.heights
    assert height is not None
    inner = height > 0
    if not has_child[inner].all() or has_child[~inner].any():
        return "some state has both terminal and non-terminal actions"
    if (height[child[inner]] != (height[inner] - 1).unsqueeze(-1)).any():
        return "its leaves are not all at the same depth"
    n_parents = torch.bincount(child[has_child], minlength=S)
    roots = (n_parents == 0).nonzero().flatten()
    if (n_parents > 1).any():
        return "some state has more than one parent (state, action)"
    if roots.numel() != 1 or float(mdp.mu0[roots[0]]) < 1.0 - 1e-12:
        return "mu0 is not a point mass on its only parentless state"
    parent_sa = torch.full((S,), -1, dtype=torch.long, device=mdp.device)
    sa = torch.arange(S * A, device=mdp.device).reshape(S, A)
    parent_sa[child[has_child]] = sa[has_child]
    return _Tree(child=child, parent_sa=parent_sa)


def tree_applicable(mdp: TabularMDP) -> bool:
    """Whether the closed-form ``"tree"`` backend applies to ``mdp``.

    It does for finite-horizon MDPs (``gamma = 1``) with deterministic transitions whose states
    form a tree rooted at the start state (``mu0`` a point mass there, every other state with
    exactly one parent state-action pair) with all leaves at the same depth, e.g. MDPs whose
    states are histories.
    """
    return isinstance(_tree_structure(mdp), _Tree)


@dataclass(frozen=True)
class _Flow:
    """Index tensors that assemble ``M diag(w) M^T`` by scatter-adds, and the reachable states."""

    reach: torch.Tensor  # [S] bool: states with positive occupancy
    c_index: torch.Tensor  # [S*A*K] flat index s * S + s'
    c_prob: torch.Tensor  # [S, A, K] gamma * P
    t_index: torch.Tensor  # [S*A*K*K] flat index s'_k * S + s'_l
    t_prob: torch.Tensor  # [S, A, K, K] gamma^2 * P_k * P_l
    log_gp: torch.Tensor  # [S, A, K] log(gamma * P) (-inf on padding)
    temper: torch.Tensor  # [S] expected remaining (discounted) decisions under the uniform policy


def _flow_structure(mdp: TabularMDP) -> _Flow:
    cache = _cache(mdp)
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
    out = _Flow(
        reach=reach,
        c_index=(s_idx * S + ns).flatten(),
        c_prob=gp,
        t_index=(ns.unsqueeze(-1) * S + ns.unsqueeze(-2)).flatten(),
        t_prob=gp.unsqueeze(-1) * gp.unsqueeze(-2),
        log_gp=gp.log(),
        temper=temper,
    )
    cache["flow"] = out
    return out


# ---------------------------------------------------------------------------------------------
# flow algebra shared by the Newton solver and the implicit gradient
# ---------------------------------------------------------------------------------------------
def _flow(mdp: TabularMDP, x: torch.Tensor) -> torch.Tensor:
    """``M x`` for ``x[..., S, A]``: ``sum_a x(s, a) - gamma sum_{s',a'} P(s|s',a') x(s', a')``."""
    return x.sum(-1) - mdp.gamma * mdp.inflow(x)


def flow_residual(mdp: TabularMDP, nu: torch.Tensor) -> torch.Tensor:
    """The flow-constraint residual ``M nu - mu0`` with shape ``[..., S]``."""
    return _flow(mdp, nu) - mdp.mu0


def _flow_transpose(mdp: TabularMDP, x: torch.Tensor) -> torch.Tensor:
    """``M^T x`` for ``x[B, S]``: ``x(s) - gamma sum_s' P(s'|s,a) x(s')``, shape ``[B, S, A]``."""
    return x.unsqueeze(-1) - mdp.gamma * mdp.expected_next(x)


def _flow_hessian(mdp: TabularMDP, w: torch.Tensor) -> torch.Tensor:
    """``H = M diag(w) M^T`` for weights ``w[B, S, A]``, as a dense ``[B, S, S]`` matrix."""
    B, S, _ = w.shape
    fs = _flow_structure(mdp)
    cross = torch.zeros(B, S * S, dtype=w.dtype, device=w.device)
    cross.index_add_(1, fs.c_index, (w.unsqueeze(-1) * fs.c_prob).flatten(1))
    cross = cross.view(B, S, S)
    H = torch.zeros(B, S * S, dtype=w.dtype, device=w.device)
    H.index_add_(1, fs.t_index, (w[..., None, None] * fs.t_prob).flatten(1))
    H = H.view(B, S, S) - cross - cross.transpose(1, 2)
    return H + torch.diag_embed(w.sum(-1))


def _solve_flow_system(H: torch.Tensor, rhs: torch.Tensor, alive: torch.Tensor | None = None) -> torch.Tensor:
    """Solves ``H x = rhs`` for the positive semi-definite ``H = M D M^T``, batched.

    Occupancies span hundreds of orders of magnitude at small alpha, so ``H`` is symmetrically
    rescaled by its diagonal (Jacobi) before a Cholesky solve. Only the ``alive`` states take part;
    the others get ``x = 0``. By default a state is alive unless its curvature is negligible (below
    ``1e-20`` of the largest, or underflowed: hardly any flow enters or leaves it, so its flow
    residual is negligible too). Falls back to least squares for the entries where Cholesky fails.
    """
    diag = H.diagonal(dim1=-2, dim2=-1)
    if alive is None:
        alive = diag > _NEGLIGIBLE * diag.amax(-1, keepdim=True)
    alive = alive & (diag > _TINY)
    scale = torch.where(alive, diag.clamp_min(_TINY).rsqrt(), torch.zeros_like(diag))
    Hs = H * scale.unsqueeze(-1) * scale.unsqueeze(-2) + torch.diag_embed((~alive).to(H.dtype))
    b = (rhs * scale).unsqueeze(-1)
    L, info = torch.linalg.cholesky_ex(Hs)
    ok = info == 0
    if ok.all():
        x = torch.cholesky_solve(b, L)
    else:
        x = torch.full_like(b, math.nan)  # stays NaN where H itself is not finite
        x[ok] = torch.cholesky_solve(b[ok], L[ok])
        redo = ~ok & torch.isfinite(Hs).all(-1).all(-1) & torch.isfinite(b).all(-1).all(-1)
        if redo.any():
            x[redo] = torch.linalg.lstsq(Hs[redo], b[redo]).solution
    return x.squeeze(-1) * scale


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
    w = nu / alpha
    dg = w * grad
    # States with negligible outflow carry no weight in the result; leaving them out also keeps H
    # well conditioned when nu comes from a solver whose tiniest entries are noise.
    outflow = nu.sum(-1)
    alive = outflow > _NEGLIGIBLE * outflow.amax(-1, keepdim=True)
    x = _solve_flow_system(_flow_hessian(mdp, w), _flow(mdp, dg), alive)
    return dg - w * _flow_transpose(mdp, x)


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


def _attach_implicit_grad(mdp: TabularMDP, c: torch.Tensor, nu: torch.Tensor, alpha: float) -> torch.Tensor:
    if not (torch.is_grad_enabled() and c.requires_grad):
        return nu
    return _ImplicitOccupancy.apply(c, nu.detach(), mdp, alpha)


# ---------------------------------------------------------------------------------------------
# backend 1: closed form on history trees
# ---------------------------------------------------------------------------------------------
def _solve_tree(mdp: TabularMDP, c: torch.Tensor, alpha: float, lead: tuple[int, ...]) -> torch.Tensor:
    """Closed form on a history tree, one vectorized step per height level; plain autograd.

    On a tree the joint entropy of the occupancy weighs the policy entropy at ``s`` by the number
    ``d(s) = height + 1`` of decisions left (every level of the subtree carries the flow of ``s``),
    so backward induction with temperature ``alpha d(s)`` is exact:
    ``G(s) = alpha d(s) LSE_a((c(s, a) + G(child)) / (alpha d(s)))``, ``pi = softmax`` of the same,
    and ``nu(s, a) = inflow(s) pi(a | s)`` forward from the root.
    """
    tree = _tree_structure(mdp)
    assert isinstance(tree, _Tree)
    assert mdp.levels is not None
    B, S, A = c.shape
    G = c.new_zeros(B, S)
    log_pi = []
    for h, lvl in enumerate(mdp.levels):
        q = c[:, lvl] if h == 0 else c[:, lvl] + G[:, tree.child[lvl]]
        temp = alpha * (h + 1)
        G = G.index_copy(1, lvl, temp * torch.logsumexp(q / temp, -1))
        log_pi.append(torch.log_softmax(q / temp, -1))
    nu = c.new_zeros(B, S * A)
    for lvl, lp in zip(reversed(mdp.levels), reversed(log_pi)):
        parent = tree.parent_sa[lvl]
        if (parent < 0).any():  # the root level
            inflow = mdp.mu0[lvl].expand(B, -1)
        else:
            inflow = nu[:, parent]
        cols = (lvl.unsqueeze(-1) * A + torch.arange(A, device=c.device)).flatten()
        nu = nu.index_copy(1, cols, (inflow.unsqueeze(-1) * lp.exp()).flatten(1))
    return nu.view(B, S, A)


# ---------------------------------------------------------------------------------------------
# backend 2: damped Newton on the dual
# ---------------------------------------------------------------------------------------------
def _scatter_logsumexp(base: torch.Tensor, index: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """``out[b, i] = logsumexp(base[b, i], vals[b, j] for j with index[j] = i)``."""
    idx = index.expand_as(vals)
    top = base.scatter_reduce(1, idx, vals, "amax", include_self=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    acc = (base - top).exp().scatter_add(1, idx, (vals - top.gather(1, idx)).exp())
    return acc.log() + top


def _warm_start(mdp: TabularMDP, c: torch.Tensor, alpha: float) -> torch.Tensor:
    """Dual variables ``V[B, S]`` that are exact on history trees and close elsewhere.

    1. A policy from the tree recursion, with the expected number of remaining (discounted)
       decisions under the uniform policy as temperature multiplier (backward induction on acyclic
       MDPs, soft policy iteration on MDPs with cycles).
    2. Its state occupancy ``d`` (a log-domain forward sweep on acyclic MDPs, a linear solve,
       floored at ``1e-14 max d``, on MDPs with cycles).
    3. ``V`` solving ``V(s) = alpha logsumexp_a(Q(s, a) / alpha) - alpha - alpha log d(s)``,
       ``Q = c + gamma E[V']``, so that ``sum_a nu(s, a) = d(s)`` exactly (backward induction on
       acyclic MDPs; soft policy iteration on MDPs with cycles).
    """
    fs = _flow_structure(mdp)
    B, S, A = c.shape
    gamma = mdp.gamma
    temp = (alpha * fs.temper).unsqueeze(-1)  # [S, 1]
    if mdp.levels is not None:
        G = c.new_zeros(B, S)
        for lvl in mdp.levels:
            q = c[:, lvl] + gamma * mdp.expected_next(G)[:, lvl]
            G[:, lvl] = temp[lvl, 0] * torch.logsumexp(q / temp[lvl], -1)
        log_pi = torch.log_softmax((c + gamma * mdp.expected_next(G)) / temp, -1)
        log_d = mdp.mu0.log().expand(B, S).clone()
        for lvl in reversed(mdp.levels[1:]):
            vals = log_d[:, lvl, None, None] + log_pi[:, lvl, :, None] + fs.log_gp[lvl]
            log_d = _scatter_logsumexp(log_d, mdp.next_states[lvl].flatten(), vals.flatten(1))
        log_d = torch.where(fs.reach, log_d, torch.zeros_like(log_d))
        V = c.new_zeros(B, S)
        for lvl in mdp.levels:
            q = c[:, lvl] + gamma * mdp.expected_next(V)[:, lvl]
            V[:, lvl] = alpha * (torch.logsumexp(q / alpha, -1) - 1.0 - log_d[:, lvl])
        return V
    # MDPs with cycles: soft policy iteration (Newton's method on the soft Bellman equation)
    P = mdp.dense_transitions()  # [S, A, S]
    eye = torch.eye(S, dtype=c.dtype, device=c.device)

    def kernel(pi: torch.Tensor) -> torch.Tensor:
        return eye - gamma * torch.einsum("bsa,sat->bst", pi, P)

    def soft_pi(tau: torch.Tensor, shift: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
        """V = tau LSE((c + gamma E V') / tau) + shift, from the policy exp(log_pi)."""
        for _ in range(_SOFT_PI_MAX_ITER):
            pi = log_pi.exp()
            r = (pi * (c - tau * log_pi)).sum(-1) + shift
            V = torch.linalg.solve(kernel(pi), r.unsqueeze(-1)).squeeze(-1)
            new = torch.log_softmax((c + gamma * mdp.expected_next(V)) / tau, -1)
            done = ((new.exp() - pi).abs().amax() <= 1e-12).item()
            log_pi = new
            if done:
                break
        return V

    uniform = torch.full_like(c, -math.log(A))
    V = soft_pi(temp, torch.zeros_like(c[..., 0]), uniform)
    log_pi = torch.log_softmax((c + gamma * mdp.expected_next(V)) / temp, -1)
    rhs = mdp.mu0.expand(B, S).unsqueeze(-1)
    d = torch.linalg.solve(kernel(log_pi.exp()).transpose(1, 2), rhs).squeeze(-1)
    d = torch.maximum(d, 1e-14 * d.amax(-1, keepdim=True))
    log_d = torch.where(fs.reach, d.log(), torch.zeros_like(d))
    V = soft_pi(torch.full_like(temp, alpha), -alpha * (1.0 + log_d), log_pi)
    return torch.where(fs.reach, V, torch.zeros_like(V))


def _relative_residual(mdp: TabularMDP, nu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``M nu - mu0`` and its sup-norm relative to ``max(1, max_s sum_a nu(s, a))`` (inf if NaN)."""
    res = flow_residual(mdp, nu)
    err = res.abs().amax(-1) / nu.sum(-1).amax(-1).clamp_min(1.0)
    return res, torch.where(torch.isfinite(err), err, torch.full_like(err, math.inf))


def _newton(
    mdp: TabularMDP, c: torch.Tensor, alpha: float, tol: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Damped Newton on the dual; returns ``nu``, the relative flow residual and a stalled mask.

    Works in a shifted form: the exponent ``z = (c - M^T V) / alpha - 1`` is formed once at the
    warm start ``V0`` and then updated by ``-M^T u / alpha`` for the Newton corrections ``u``, so
    the large, cancelling terms of ``c / alpha`` and ``V / alpha`` (|c| / alpha ~ 1e4 at
    alpha = 0.01) are rounded once instead of at every iterate; the iteration then solves the
    problem of that (rounded) exponent to the full precision of the flow sums.
    """
    fs = _flow_structure(mdp)
    mask = fs.reach.to(c.dtype).unsqueeze(-1)  # unreachable states carry no flow
    B = c.shape[0]
    V0 = _warm_start(mdp, c, alpha)
    z = (c - _flow_transpose(mdp, V0)) / alpha - 1.0
    nu = z.exp() * mask
    res, err = _relative_residual(mdp, nu)
    active = err > tol
    stalled = torch.zeros(B, dtype=torch.bool, device=c.device)
    for _ in range(max_iter):
        if not active.any():
            break
        idx = active.nonzero().flatten()
        z_a, nu_a, r_a = z[idx], nu[idx], res[idx]
        step = _solve_flow_system(_flow_hessian(mdp, nu_a / alpha), r_a)  # H u = M nu - mu0
        slope = -(r_a * step).sum(-1)  # directional derivative of the dual objective along u
        dz = -_flow_transpose(mdp, step) / alpha  # change of the exponent per unit step
        lin = (mdp.mu0 * step).sum(-1)
        t = torch.ones_like(slope)
        accepted = torch.zeros_like(slope, dtype=torch.bool)
        for _ in range(60):  # backtracking (Armijo) line search, per batch entry
            tdz = t.view(-1, 1, 1) * dz
            # change of the dual objective, formed without cancellation, and its rounding level
            gain = alpha * torch.where(
                tdz.abs() <= 1.0, nu_a * torch.expm1(tdz), (z_a + tdz).exp() * mask - nu_a
            )
            change = t * lin + gain.sum((-2, -1))
            noise = 64 * _EPS * (t * lin.abs() + gain.abs().sum((-2, -1)))
            accepted |= torch.isfinite(change) & (change <= 1e-4 * t * slope + noise)
            if accepted.all():
                break
            t = torch.where(accepted, t, 0.5 * t)
        z_new = z_a + torch.where(accepted, t, torch.ones_like(t)).view(-1, 1, 1) * dz
        nu_new = z_new.exp() * mask
        r_new, e_new = _relative_residual(mdp, nu_new)
        # At the rounding floor the objective cannot see a decrease; a full step that reduces the
        # residual is then taken. Entries for which neither holds have stalled.
        take = accepted | (e_new < err[idx])
        stalled[idx[~take]] = True
        z[idx] = torch.where(take.view(-1, 1, 1), z_new, z_a)
        nu[idx] = torch.where(take.view(-1, 1, 1), nu_new, nu_a)
        res[idx] = torch.where(take.view(-1, 1), r_new, r_a)
        err[idx] = torch.where(take, e_new, err[idx])
        active = (err > tol) & ~stalled
    return nu, err, stalled


def _solve_newton(
    mdp: TabularMDP,
    c: torch.Tensor,
    alpha: float,
    lead: tuple[int, ...],
    tol: float = NEWTON_TOL,
    max_iter: int = NEWTON_MAX_ITER,
) -> torch.Tensor:
    """Dual Newton solve without autograd, then the implicit-function backward."""
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be positive and finite, got {tol}")
    if int(max_iter) != max_iter or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter}")
    with torch.no_grad():
        nu, err, stalled = _newton(mdp, c.detach(), alpha, tol, int(max_iter))
    bad = ~(err <= tol)
    if bad.any():
        how = f"within max_iter={max_iter} iterations"
        if stalled.any():
            how += f" (the line search stalled for {int(stalled.sum())} of them)"
        raise RegularizedSolveError(
            f"newton: the flow residual did not reach tol={tol:g} {how} for batch entries "
            f"{_name_entries(bad, lead)} (relative residuals {_fmt(err[bad])}); raise max_iter, "
            "loosen tol, or increase alpha",
            _entries(bad, lead),
        )
    return _attach_implicit_grad(mdp, c, nu, alpha)


# ---------------------------------------------------------------------------------------------
# backend 3: cvxpylayers
# ---------------------------------------------------------------------------------------------
def _optimality_error(mdp: TabularMDP, c: torch.Tensor, nu: torch.Tensor, alpha: float) -> torch.Tensor:
    """A-posteriori error estimate of a candidate optimum ``nu[B, S, A]``, relative to the
    occupancy scale ``max(1, max_s sum_a nu(s, a))``; ``inf`` where ``nu`` is not finite.

    The largest of: the flow residual ``|M nu - mu0|``, the most negative entry, and the
    stationarity error ``max nu |r| / alpha`` with ``r = y - M^T V``, ``y = c - alpha (log nu + 1)``
    and ``V`` the value of ``y`` under the policy ``nu(a | s)`` (``V = y_pi + gamma P_pi V``). At the
    optimum ``y = M^T V`` exactly; near it ``r / alpha`` is the change of ``log nu`` an exact solve
    would make, so the estimate is the absolute error of ``nu`` to first order. Entries that are
    pure solver noise (tiny ``nu``) enter with their tiny weight only.
    """
    B, S, A = nu.shape
    pos = nu.clamp_min(0.0)
    d = pos.sum(-1, keepdim=True)
    pi = torch.where(d > 0, pos / d.clamp_min(_TINY), torch.full_like(pos, 1.0 / A))
    y = c - alpha * (pos.clamp_min(_TINY).log() + 1.0)
    kernel = torch.eye(S, dtype=nu.dtype, device=nu.device) - mdp.gamma * torch.einsum(
        "bsa,sat->bst", pi, mdp.dense_transitions()
    )
    V = torch.linalg.solve(kernel, (pi * y).sum(-1, keepdim=True)).squeeze(-1)
    stationarity = (pos * (y - _flow_transpose(mdp, V))).abs().amax((-2, -1)) / alpha
    feasibility = torch.maximum(flow_residual(mdp, nu).abs().amax(-1), (-nu).amax((-2, -1)))
    err = torch.maximum(stationarity, feasibility) / pos.sum(-1).amax(-1).clamp_min(1.0)
    finite = torch.isfinite(err) & torch.isfinite(nu).all(-1).all(-1)
    return torch.where(finite, err, torch.full_like(err, math.inf))


def _layer(mdp: TabularMDP, alpha: float) -> Any:
    """The ``CvxpyLayer`` of the regularized program for ``(mdp, alpha)``, built once."""
    layers = _cache(mdp).setdefault("layers", {})
    if alpha in layers:
        return layers[alpha]
    import cvxpy as cp
    import scipy.sparse as sp
    from cvxpylayers.torch import CvxpyLayer  # imported here: building layers is the slow part

    S, A = mdp.shape
    M = mdp.flow_matrix().cpu()
    i = M.indices().numpy()
    M_sp = sp.csr_matrix((M.values().numpy(), (i[0], i[1])), shape=(S, S * A))
    c_par = cp.Parameter(S * A)
    nu = cp.Variable(S * A)
    problem = cp.Problem(
        cp.Maximize(c_par @ nu + alpha * cp.sum(cp.entr(nu))),
        [M_sp @ nu == mdp.mu0.cpu().numpy()],
    )
    layers[alpha] = layer = CvxpyLayer(problem, parameters=[c_par], variables=[nu])
    return layer


def _solve_cvxpylayers(
    mdp: TabularMDP,
    c: torch.Tensor,
    alpha: float,
    lead: tuple[int, ...],
    layer_backward: bool = False,
    check_tol: float = LAYER_CHECK_TOL,
    **solver_args: Any,
) -> torch.Tensor:
    """The layer's forward; the implicit-function backward unless ``layer_backward``."""
    from diffcp import SolverError

    B, S, A = c.shape
    if B == 0:
        return c.new_zeros(0, S, A)
    if layer_backward and alpha < LAYER_BACKWARD_MIN_ALPHA:
        warnings.warn(
            f"cvxpylayers' own derivative (diffcp) is unreliable at alpha={alpha:g} < "
            f"{LAYER_BACKWARD_MIN_ALPHA}: near-zero occupancies make the exponential-cone derivative "
            "degenerate; use layer_backward=False (implicit-function gradient)",
            stacklevel=3,
        )
    if str(solver_args.get("solve_method", "Clarabel")).upper() == "CLARABEL":
        solver_args = {**DEFAULT_LAYER_SOLVER_ARGS, **solver_args}
    layer = _layer(mdp, alpha)
    c_flat = c.reshape(B, S * A).cpu()
    grad_through_layer = layer_backward and torch.is_grad_enabled() and c.requires_grad
    try:
        with torch.set_grad_enabled(grad_through_layer), warnings.catch_warnings():
            # cvxpylayers 1.2 hands torch tensors to np.array (a NumPy 2 DeprecationWarning)
            warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy")
            (x,) = layer(c_flat if grad_through_layer else c_flat.detach(), solver_args=solver_args)
    except SolverError as exc:  # diffcp names no batch entry
        raise RegularizedSolveError(
            f"cvxpylayers: the solver failed on some of the {B} batch entries ({exc}); tighten the "
            "solver settings or use backend='newton'",
            _entries(torch.ones(B, dtype=torch.bool), lead),
        ) from exc
    nu = x.to(device=c.device, dtype=c.dtype).view(B, S, A)
    err = _optimality_error(mdp, c.detach(), nu.detach(), alpha)
    bad = ~(err <= check_tol)
    if bad.any():
        raise RegularizedSolveError(
            f"cvxpylayers: the solver did not reach the optimum within check_tol={check_tol:g} for "
            f"batch entries {_name_entries(bad, lead)} (estimated errors {_fmt(err[bad])}); tighten "
            "the solver settings or use backend='newton'",
            _entries(bad, lead),
        )
    # The exact optimum is strictly positive on reachable states; negative entries (at most
    # check_tol in size, verified above) are solver noise, so clamping only removes that noise.
    nu = nu.clamp_min(0.0)
    if layer_backward:
        return nu
    return _attach_implicit_grad(mdp, c, nu.detach(), alpha)


# ---------------------------------------------------------------------------------------------
# dispatcher
# ---------------------------------------------------------------------------------------------
_SOLVERS: dict[str, Callable[..., torch.Tensor]] = {
    "tree": _solve_tree,
    "newton": _solve_newton,
    "cvxpylayers": _solve_cvxpylayers,
}
_OPTIONS = {
    "tree": (),
    "newton": ("tol", "max_iter"),
    "cvxpylayers": None,  # layer_backward, check_tol and any diffcp / solver keyword
}


def regularized_occupancy(
    mdp: TabularMDP,
    c: torch.Tensor,
    alpha: float,
    backend: str = "auto",
    **solver_options: Any,
) -> torch.Tensor:
    """Solves the entropy-regularized occupancy program for a batch of rewards, differentiably.

    ``max_nu c.nu - alpha sum nu log nu`` subject to ``M nu = mu0``, ``nu >= 0`` (paper, Appendix E,
    equation 13); see the module docstring for the backends.

    Args:
        mdp: The MDP.
        c: Rewards ``[..., S, A]``; leading dimensions are flattened into one batch and restored.
        alpha: Entropy weight, positive and finite.
        backend: ``"auto"`` (``"tree"`` where it applies, else ``"newton"``; takes newton's
            options), ``"tree"``, ``"newton"`` or ``"cvxpylayers"``.
        **solver_options: Backend options. ``newton``: ``tol`` (default ``1e-12``, on
            ``max_s |M nu - mu0|_s / max(1, max_s sum_a nu(s, a))``) and ``max_iter`` (default
            100). ``cvxpylayers``: ``layer_backward`` (default ``False``: implicit-function
            gradient; ``True``: diffcp's derivative, which warns below ``alpha = 0.3``),
            ``check_tol`` (default ``1e-4``, bound on the a-posteriori error estimate of the
            solution, see :data:`LAYER_CHECK_TOL`) and keyword arguments for diffcp (for Clarabel,
            the default, merged over :data:`DEFAULT_LAYER_SOLVER_ARGS`; e.g.
            ``solve_method="SCS", eps=1e-10``). ``tree`` takes none.

    Returns:
        Occupancies ``nu[..., S, A]`` in the MDP's dtype.

    Raises:
        ValueError: On an unknown backend, a bad ``alpha`` or ``c``, or ``"tree"`` on an MDP that is
            not a history tree.
        TypeError: On an option the backend does not take.
        RegularizedSolveError: If the solver fails on some batch entries (named in the message).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(map(repr, BACKENDS))}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be positive and finite, got {alpha}")
    mdp.check_rewards(c)
    if not c.is_floating_point():
        raise TypeError(f"c must be a floating-point tensor, got {c.dtype}")
    allowed = _OPTIONS["newton" if backend == "auto" else backend]  # auto takes newton's options
    if allowed is not None:
        unknown = sorted(set(solver_options) - set(allowed))
        if unknown:
            raise TypeError(
                f"backend {backend!r} takes no option(s) {', '.join(unknown)}; allowed: "
                f"{', '.join(allowed) if allowed else 'none'}"
            )
    if backend == "tree":
        why = _tree_structure(mdp)
        if not isinstance(why, _Tree):
            raise ValueError(
                "backend 'tree' needs a finite-horizon tree-structured MDP (deterministic history tree "
                f"with all leaves at the same depth), but {why}; use 'newton' or 'auto'"
            )
    elif backend == "auto":
        backend = "tree" if tree_applicable(mdp) else "newton"
        if backend == "tree":  # exact closed form: newton's options do not apply
            solver_options = {}
    lead = tuple(c.shape[:-2])
    flat = c.reshape(-1, *mdp.shape).to(mdp.dtype)
    nu = _SOLVERS[backend](mdp, flat, alpha, lead, **solver_options)
    return nu.reshape(*lead, *mdp.shape)


# ---------------------------------------------------------------------------------------------
# error-message helpers
# ---------------------------------------------------------------------------------------------
def _entries(bad: torch.Tensor, lead: tuple[int, ...]) -> list[Any]:
    flat = bad.nonzero().flatten().cpu().numpy()
    if len(lead) <= 1:
        return [int(i) for i in flat]
    return [tuple(int(j) for j in np.unravel_index(i, lead)) for i in flat]


def _name_entries(bad: torch.Tensor, lead: tuple[int, ...], limit: int = 10) -> str:
    items = _entries(bad, lead)
    shown = ", ".join(map(str, items[:limit]))
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)} of {int(bad.numel())})"


def _fmt(x: torch.Tensor, limit: int = 5) -> str:
    vals = [f"{float(v):.3g}" for v in x.flatten()[:limit]]
    return "[" + ", ".join(vals) + (", ...]" if x.numel() > limit else "]")
