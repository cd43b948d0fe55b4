"""The backend ``cvxpylayers``: the regularized follower problem as a ``CvxpyLayer`` (exponential cones).

This is the route of the paper's reference implementation (a conic solver with a differentiable
layer). The forward is the layer's (Clarabel by default, tight tolerances), checked a posteriori
against the optimality conditions. By default the backward is the implicit-function gradient
(:func:`~dmd_torch.regularized.systems.implicit_occupancy_vjp`, as ``newton``): at small ``alpha``
the occupancies of a peaked policy fall to 1e-20 and below, which makes diffcp's exponential-cone
derivative degenerate, so the layer's own backward (``layer_backward=True``) is wrong there and
warns below ``alpha = 0.3``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from dmd_torch.checks import check_bool, check_float
from dmd_torch.mdp import TabularMDP
from dmd_torch.regularized.base import Backend
from dmd_torch.regularized.flow import (
    TINY,
    RegularizedSolveError,
    entries,
    flow_residual,
    flow_transpose,
    format_values,
    mdp_cache,
    name_entries,
)
from dmd_torch.regularized.systems import attach_implicit_grad

__all__ = ["CvxpyLayersBackend", "CvxpyLayersOptions", "LAYER_CHECK_TOL", "LAYER_BACKWARD_MIN_ALPHA",
           "DEFAULT_LAYER_SOLVER_ARGS"]

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


@dataclass(frozen=True)
class CvxpyLayersOptions:
    """Options of the ``cvxpylayers`` backend.

    Attributes:
        layer_backward: Differentiate with diffcp's derivative instead of the implicit-function gradient.
        check_tol: Bound on the a-posteriori error estimate of the solution (:data:`LAYER_CHECK_TOL`).
        solver_args: Keyword arguments for diffcp; for Clarabel (the default solver) merged over
            :data:`DEFAULT_LAYER_SOLVER_ARGS`, e.g. ``{"solve_method": "SCS", "eps": 1e-10}``.
    """

    layer_backward: bool = False
    check_tol: float = LAYER_CHECK_TOL
    solver_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_bool("cvxpylayers layer_backward", self.layer_backward)
        object.__setattr__(self, "check_tol", check_float("cvxpylayers check_tol", self.check_tol))
        if not isinstance(self.solver_args, dict) or not all(isinstance(k, str) for k in self.solver_args):
            raise ValueError(f"cvxpylayers solver_args must be a mapping of keyword arguments, got {self.solver_args!r}")

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
    pi = torch.where(d > 0, pos / d.clamp_min(TINY), torch.full_like(pos, 1.0 / A))
    y = c - alpha * (pos.clamp_min(TINY).log() + 1.0)
    kernel = torch.eye(S, dtype=nu.dtype, device=nu.device) - mdp.gamma * torch.einsum(
        "bsa,sat->bst", pi, mdp.dense_transitions()
    )
    V = torch.linalg.solve(kernel, (pi * y).sum(-1, keepdim=True)).squeeze(-1)
    stationarity = (pos * (y - flow_transpose(mdp, V))).abs().amax((-2, -1)) / alpha
    feasibility = torch.maximum(flow_residual(mdp, nu).abs().amax(-1), (-nu).amax((-2, -1)))
    err = torch.maximum(stationarity, feasibility) / pos.sum(-1).amax(-1).clamp_min(1.0)
    finite = torch.isfinite(err) & torch.isfinite(nu).all(-1).all(-1)
    return torch.where(finite, err, torch.full_like(err, math.inf))


def _layer(mdp: TabularMDP, alpha: float) -> Any:
    """The ``CvxpyLayer`` of the regularized program for ``(mdp, alpha)``, built once."""
    layers = mdp_cache(mdp).setdefault("layers", {})
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



class CvxpyLayersBackend(Backend):
    """The layer's forward, checked; the implicit-function backward unless ``layer_backward`` (module docstring)."""

    name = "cvxpylayers"
    Options = CvxpyLayersOptions

    def solve(
        self, mdp: TabularMDP, c: torch.Tensor, alpha: float, lead: tuple[int, ...], group: int = 1
    ) -> torch.Tensor:
        """Solves the batch with the cached layer of ``(mdp, alpha)``; raises on entries it did not solve."""
        from diffcp import SolverError

        layer_backward, check_tol = self.options.layer_backward, self.options.check_tol
        solver_args = dict(self.options.solver_args)
        B, S, A = c.shape
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
                entries(torch.ones(B, dtype=torch.bool), lead),
            ) from exc
        nu = x.to(device=c.device, dtype=c.dtype).view(B, S, A)
        err = _optimality_error(mdp, c.detach(), nu.detach(), alpha)
        bad = ~(err <= check_tol)
        if bad.any():
            raise RegularizedSolveError(
                f"cvxpylayers: the solver did not reach the optimum within check_tol={check_tol:g} for "
                f"batch entries {name_entries(bad, lead)} (estimated errors {format_values(err[bad])}); tighten "
                "the solver settings or use backend='newton'",
                entries(bad, lead),
            )
        # The exact optimum is strictly positive on reachable states; negative entries (at most
        # check_tol in size, verified above) are solver noise, so clamping only removes that noise.
        nu = nu.clamp_min(0.0)
        if layer_backward:
            return nu
        return attach_implicit_grad(mdp, c, nu.detach(), alpha)
