"""The backend ``newton``: damped Newton on the dual of the regularized follower problem, any tabular MDP.

The dual of the paper's equation 13 is the smooth, convex
``min_V mu0.V + alpha sum_{s,a} exp((c - M^T V)(s,a) / alpha - 1)``; its minimizer gives
``nu = exp((c - M^T V) / alpha - 1)``. Newton's method (with a backtracking line search) from a warm
start that is exact on history trees solves it to the flow residual ``tol``; the solution is
differentiated by the implicit function theorem
(:func:`~dmd_torch.regularized.systems.implicit_occupancy_vjp`).

Two accelerations, neither of which changes the problem solved:

* **Balancing.** Where a state's outflow and inflow differ by more than a factor ``e``, a Newton
  step only moves ``log nu`` there by about 1 (the dual is exponential in ``V``). Before each Newton
  step those states' duals move by ``alpha log(out / in) / (1 + gamma f)`` (``f``: the share of the
  inflow that comes from other states), which balances each such state alone; the move is kept
  only where it lowers the dual objective.
* **Related problems.** On MDPs with cycles and at least 40 states, where the warm start is poor
  and an iteration's cost grows with the batch, problems that come in groups (the ``n + 1``
  follower problems of a profile, ``group = n + 1``) are solved head first;
  the other problems of a group start from the head's duals, and any that this does not solve
  are solved again from the warm start.

From a poor start a Newton step can be 1e18 long (where a state's flow has all but vanished) or,
with ``H`` too ill-conditioned, not a descent direction: the line search's first trial moves no
exponent by more than 30, and a step that does not descend is replaced by the Jacobi step
``diag(H)^-1 (M nu - mu0)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dmd_torch.checks import check_float, check_int
from dmd_torch.mdp import TabularMDP
from dmd_torch.regularized.base import Backend
from dmd_torch.regularized.flow import (
    EPS,
    TINY,
    RegularizedSolveError,
    entries,
    flow_residual,
    flow_structure,
    flow_transpose,
    format_values,
    name_entries,
)
from dmd_torch.regularized.systems import attach_implicit_grad, flow_newton_solve

__all__ = ["NewtonBackend", "NewtonOptions", "NEWTON_TOL", "NEWTON_MAX_ITER"]

NEWTON_TOL = 1e-12
"""Default tolerance on ``max_s |M nu - mu0|_s / max(1, max_s sum_a nu(s, a))``."""
NEWTON_MAX_ITER = 100
"""Default iteration limit."""
_SOFT_PI_MAX_ITER = 5  # soft policy iterations of the warm start on MDPs with cycles
_MAX_MOVE = 30.0  # largest change of an exponent log nu(s, a) in the first trial of a line search
_GROUP_MIN_STATES = 40  # related problems start from their head's duals from this many states (measured:
# 2x faster on the 8 x 8 gridworld, even at 6 x 6, slower at 4 x 4 and below, where iterations cost
# little but the head and the rest run one after the other)


@dataclass(frozen=True)
class NewtonOptions:
    """Options of the ``newton`` backend.

    Attributes:
        tol: Tolerance on the relative flow residual, finite and ``> 0``.
        max_iter: Newton iterations at most, ``>= 0``.
    """

    tol: float = NEWTON_TOL
    max_iter: int = NEWTON_MAX_ITER

    def __post_init__(self) -> None:
        object.__setattr__(self, "tol", check_float("newton tol", self.tol))
        check_int("newton max_iter", self.max_iter, minimum=0)

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
    fs = flow_structure(mdp)
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


def _balance(mdp: TabularMDP, nu: torch.Tensor, alpha: float) -> torch.Tensor:
    """Dual moves ``u[B, S]`` that balance each state whose outflow and inflow differ by more than ``e``.

    Raising ``V(s)`` by ``u`` scales the outflow of ``s`` by ``exp(-u / alpha)`` and the inflow from
    other states by ``exp(gamma u / alpha)``; ``u = alpha log(out / in) / (1 + gamma f)``, with ``f``
    the share of the inflow that comes from other states, equates them for ``s`` alone. The inflow
    is summed directly: as ``out - (M nu - mu0)`` it would cancel to 0 where it is below ``eps out``.
    """
    out = nu.sum(-1)
    entering = mdp.gamma * mdp.inflow(nu)
    inflow = mdp.mu0 + entering
    ratio = torch.where(out > TINY, out / inflow.clamp_min(TINY), torch.ones_like(out)).log()
    share = (entering / inflow.clamp_min(TINY)).clamp(0.0, 1.0)
    move = alpha * ratio / (1.0 + mdp.gamma * share)
    return torch.where(ratio.abs() > 1.0, move, torch.zeros_like(move))


def _dual_change(
    mdp: TabularMDP, z: torch.Tensor, nu: torch.Tensor, u: torch.Tensor, dz: torch.Tensor, mask: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The change of the dual objective when ``V += u`` (``z += dz``), formed without cancellation, and its rounding level."""
    gain = alpha * torch.where(dz.abs() <= 1.0, nu * torch.expm1(dz), (z + dz).exp() * mask - nu)
    lin = (mdp.mu0 * u).sum(-1)
    return lin + gain.sum((-2, -1)), 64 * EPS * (lin.abs() + gain.abs().sum((-2, -1)))


def _newton(
    mdp: TabularMDP, c: torch.Tensor, alpha: float, tol: float, max_iter: int, start: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Damped Newton on the dual; returns ``nu``, the relative flow residual, a stalled mask and ``V``.

    Starts from the duals ``start[B, S]`` or, if ``None``, from :func:`_warm_start`. Works in a
    shifted form: the exponent ``z = (c - M^T V) / alpha - 1`` is formed once at the start ``V0``
    and then updated by ``-M^T u / alpha`` for the corrections ``u``, so the large, cancelling terms
    of ``c / alpha`` and ``V / alpha`` (|c| / alpha ~ 1e4 at alpha = 0.01) are rounded once instead
    of at every iterate; the iteration then solves the problem of that (rounded) exponent to the
    full precision of the flow sums. Each iteration first balances badly balanced states
    (:func:`_balance`, kept where the dual objective falls), then takes a Newton step.
    """
    fs = flow_structure(mdp)
    mask = fs.reach.to(c.dtype).unsqueeze(-1)  # unreachable states carry no flow
    B = c.shape[0]
    V = _warm_start(mdp, c, alpha) if start is None else start.to(c.dtype).clone()
    z = (c - flow_transpose(mdp, V)) / alpha - 1.0
    nu = z.exp() * mask
    res, err = _relative_residual(mdp, nu)
    active = err > tol
    stalled = torch.zeros(B, dtype=torch.bool, device=c.device)
    for _ in range(max_iter):
        if not active.any():
            break
        idx = active.nonzero().flatten()
        z_a, nu_a, r_a, V_a, e_a = z[idx], nu[idx], res[idx], V[idx], err[idx]
        u = _balance(mdp, nu_a, alpha) * mask[..., 0]
        keep = (u != 0).any(-1)
        if keep.any():  # kept where the dual objective falls beyond its rounding level
            dz = -flow_transpose(mdp, u) / alpha
            change, noise = _dual_change(mdp, z_a, nu_a, u, dz, mask, alpha)
            keep &= torch.isfinite(change) & (change < -noise)
        if keep.any():
            z_a = torch.where(keep.view(-1, 1, 1), z_a + dz, z_a)
            V_a = torch.where(keep.view(-1, 1), V_a + u, V_a)
            nu_a = z_a.exp() * mask
            r_a, e_a = _relative_residual(mdp, nu_a)
        step, curvature = flow_newton_solve(mdp, nu_a / alpha, r_a)  # H u = M nu - mu0
        slope = -(r_a * step).sum(-1)  # directional derivative of the dual objective along u
        poor = ~(slope < 0)  # H too ill-conditioned for a descent direction: a Jacobi step instead
        if poor.any():
            jacobi = r_a / curvature.clamp_min(TINY)
            step = torch.where(poor.unsqueeze(-1), jacobi, step)
            slope = -(r_a * step).sum(-1)
        dz = -flow_transpose(mdp, step) / alpha  # change of the exponent per unit step
        # the first trial moves no exponent by more than _MAX_MOVE (a step from a poor start can be
        # 1e18 long where a state's flow has all but vanished)
        t = (_MAX_MOVE / dz.abs().amax((-2, -1)).clamp_min(_MAX_MOVE)).nan_to_num(1.0)
        accepted = torch.zeros_like(slope, dtype=torch.bool)
        trial = torch.arange(len(idx), device=c.device)  # the entries still searching
        for _ in range(60):  # backtracking (Armijo) line search, per batch entry
            tt = t[trial].view(-1, 1)
            change, noise = _dual_change(
                mdp, z_a[trial], nu_a[trial], tt * step[trial], tt.unsqueeze(-1) * dz[trial], mask, alpha
            )
            ok = torch.isfinite(change) & (change <= 1e-4 * tt.squeeze(-1) * slope[trial] + noise)
            accepted[trial[ok]] = True
            trial = trial[~ok]
            if trial.numel() == 0:
                break
            t[trial] *= 0.5
        t = torch.where(accepted, t, torch.ones_like(t)).view(-1, 1)
        z_new = z_a + t.unsqueeze(-1) * dz
        nu_new = z_new.exp() * mask
        r_new, e_new = _relative_residual(mdp, nu_new)
        # At the rounding floor the objective cannot see a decrease; a full step that reduces the
        # residual is then taken. Entries for which neither holds have stalled.
        take = accepted | (e_new < e_a)
        stalled[idx[~take]] = True
        z[idx] = torch.where(take.view(-1, 1, 1), z_new, z_a)
        nu[idx] = torch.where(take.view(-1, 1, 1), nu_new, nu_a)
        res[idx] = torch.where(take.view(-1, 1), r_new, r_a)
        V[idx] = torch.where(take.view(-1, 1), V_a + t * step, V_a)
        err[idx] = torch.where(take, e_new, e_a)
        active = (err > tol) & ~stalled
    return nu, err, stalled, V


def _rejoin(head: torch.Tensor, rest: torch.Tensor, group: int) -> torch.Tensor:
    """Heads ``[G, ...]`` and the other members ``[G (group - 1), ...]`` back in batch order ``[G group, ...]``."""
    return torch.cat([head.unsqueeze(1), rest.view(head.shape[0], group - 1, *rest.shape[1:])], 1).flatten(0, 1)


class NewtonBackend(Backend):
    """Damped dual Newton with implicit gradients (module docstring); applies to every MDP."""

    name = "newton"
    Options = NewtonOptions

    def solve(
        self, mdp: TabularMDP, c: torch.Tensor, alpha: float, lead: tuple[int, ...], group: int = 1
    ) -> torch.Tensor:
        """Newton without autograd, then the implicit-function backward; raises where it does not converge.

        With ``group > 1`` on an MDP with cycles and at least 40 states, the heads of the groups are
        solved first and the rest start from their heads' duals (module docstring).
        """
        tol, max_iter = self.options.tol, self.options.max_iter
        B, S, A = c.shape
        with torch.no_grad():
            if group > 1 and mdp.levels is None and mdp.num_states >= _GROUP_MIN_STATES:
                rows = c.detach().view(B // group, group, S, A)
                head = _newton(mdp, rows[:, 0], alpha, tol, max_iter)
                start = head[3].unsqueeze(1).expand(-1, group - 1, -1).reshape(-1, S)
                others = rows[:, 1:].reshape(-1, S, A)
                rest = list(_newton(mdp, others, alpha, tol, max_iter, start)[:3])
                redo = ~(rest[1] <= tol)  # not solved from the head's duals: again from the warm start
                if redo.any():
                    for part, again in zip(rest, _newton(mdp, others[redo], alpha, tol, max_iter)[:3]):
                        part[redo] = again
                nu, err, stalled = (_rejoin(h, r, group) for h, r in zip(head[:3], rest))
            else:
                nu, err, stalled, _ = _newton(mdp, c.detach(), alpha, tol, max_iter)
        bad = ~(err <= tol)
        if bad.any():
            how = f"within max_iter={max_iter} iterations"
            if stalled.any():
                how += f" (the line search stalled for {int(stalled.sum())} of them)"
            raise RegularizedSolveError(
                f"newton: the flow residual did not reach tol={tol:g} {how} for batch entries "
                f"{name_entries(bad, lead)} (relative residuals {format_values(err[bad])}); raise max_iter, "
                "loosen tol, or increase alpha",
                entries(bad, lead),
            )
        return attach_implicit_grad(mdp, c, nu, alpha)
