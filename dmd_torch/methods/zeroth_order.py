"""Zeroth-order bilevel gradients (paper, section 4 "Zeroth-order methods"; Sow, Ji & Liang 2022).

The leader's objective at a profile depends on the parameters ``theta = (log w, b)`` explicitly at
fixed follower occupancies (the affine-welfare terms of the payments: optimal values of the
follower's LP, so by the envelope theorem, paper Appendix C, ``d asw / d theta = <d c / d theta,
nu*>`` at fixed ``nu*``) and through the follower's best response ``nu*(theta)`` (the agents' values,
or a loss such as the makespan). The best response is piecewise constant in ``theta`` (``nu*`` is a
vertex of the LP), so its derivative is estimated by Gaussian smoothing: for the gradient ``G`` of
the objective in ``nu*``,

    G . d nu* / d theta  ~  (1 / sigma^2) mean_j <G, nu*(theta + u_j) - nu*(theta)> u_j,   u_j ~ N(0, sigma^2 I),

with exact inner solves of all perturbed problems in one batched call and common profiles. This
module makes that estimate the backward pass of the follower's occupancy
(:class:`ZerothOrderFollower`, a ``torch.autograd.Function`` inside), so the objective is the one
computation :func:`~dmd_torch.objective.leader_objective` and its gradient comes from
``loss.backward()`` like the regularized method's. Paper hyperparameters: 20 perturbations of std
0.05, 20 profiles per step, step size 0.1. Only the parameters the setting optimizes are perturbed;
the response map is pluggable (``occupancy_fn``), so the estimator can be checked against autograd
on the smooth, regularized follower.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dmd_torch.config import ZerothOrderConfig
from dmd_torch.exact import PolicyOccupancy, solve_exact
from dmd_torch.follower import Follower, FollowerSolution, affine_rewards, affine_total
from dmd_torch.mdp import TabularMDP
from dmd_torch.mechanism import AMA
from dmd_torch.methods.gradient import GradientEstimator, GradientMethod
from dmd_torch.objective import leader_objective

__all__ = [
    "OccupancyFn",
    "exact_occupancy",
    "gaussian_smoothing_gradient",
    "ZerothOrderFollower",
    "ZerothOrderEstimator",
    "ZerothOrder",
]

#: A follower response map: rewards ``c[..., S, A]`` to occupancies ``nu[..., S, A]`` (no gradient).
OccupancyFn = Callable[[TabularMDP, torch.Tensor], torch.Tensor]


def exact_occupancy(mdp: TabularMDP, c: torch.Tensor) -> torch.Tensor:
    """The follower's exact best response (paper, equation 2), batched over leading dimensions."""
    return solve_exact(mdp, c.detach(), check_finite=False).occupancy


def gaussian_smoothing_gradient(
    f: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    num_perturbations: int,
    sigma: float,
    generator: torch.Generator,
    f0: float | torch.Tensor | None = None,
    antithetic: bool = False,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian-smoothing estimate of the gradient of ``f`` at zero.

    One-sided: ``(1 / sigma^2) mean_j (f(u_j) - f(0)) u_j``; antithetic:
    ``(1 / (2 sigma^2)) mean_j (f(u_j) - f(-u_j)) u_j``; ``u_j ~ N(0, sigma^2 I)``.

    Args:
        f: Maps perturbations ``[J, dim]`` to values ``[J]`` (one batched call).
        dim: Dimension of the perturbations.
        num_perturbations: ``J``.
        sigma: Standard deviation of the perturbations.
        generator: Random generator.
        f0: ``f(0)`` if known (one-sided only); computed otherwise.
        antithetic: Use the two-sided estimator.
        dtype: Dtype of the perturbations.

    Returns:
        The estimate ``[dim]`` and the per-perturbation terms ``[J, dim]`` whose mean it is.
    """
    u = sigma * torch.randn(num_perturbations, dim, generator=generator, dtype=dtype)
    if antithetic:
        values = f(torch.cat([u, -u]))
        diff = (values[:num_perturbations] - values[num_perturbations:]) / 2.0
    else:
        if f0 is None:
            f0 = f(torch.zeros(1, dim, dtype=dtype))[0]
        diff = f(u) - f0
    terms = diff.unsqueeze(-1) * u / sigma**2
    return terms.mean(0), terms


@dataclass
class _Perturbations:
    """What the backward pass of :class:`_SmoothedResponse` needs: the problem and the estimator."""

    follower: ZerothOrderFollower
    mdp: TabularMDP
    r: torch.Tensor
    log_weights: torch.Tensor  # detached
    boosts: torch.Tensor  # detached
    free: tuple[bool, bool]  # which of (log_weights, boosts) are perturbed

    def gradient(self, grad: torch.Tensor, nu: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The smoothed ``<grad, d nu / d theta>`` for each free parameter (``None`` for the others)."""
        n, (S, A) = self.log_weights.shape[-1], self.mdp.shape
        sizes = [k for k, free in zip((n, S * A), self.free) if free]
        fz = self.follower
        base = (grad * nu).sum()

        def f(u: torch.Tensor) -> torch.Tensor:
            parts = iter(u.split(sizes, dim=1))
            J = u.shape[0]
            dlw = next(parts) if self.free[0] else u.new_zeros(J, n)
            db = next(parts).reshape(J, S, A) if self.free[1] else u.new_zeros(J, S, A)
            lw, b = self.log_weights + dlw, self.boosts + db
            c = affine_total(self.r, lw.exp().unsqueeze(-2), b.unsqueeze(-3))  # [J, P, S, A]
            return (grad * fz.occupancy_fn(self.mdp, c)).sum((-3, -2, -1))

        g, _ = gaussian_smoothing_gradient(
            f, sum(sizes), fz.num_perturbations, fz.sigma, fz.generator, f0=base, antithetic=fz.antithetic,
            dtype=self.r.dtype,
        )
        parts = iter(g.split(sizes))
        g_lw = next(parts).reshape(n) if self.free[0] else None
        g_b = next(parts).reshape(S, A) if self.free[1] else None
        return g_lw, g_b


class _SmoothedResponse(torch.autograd.Function):
    """Identity on the follower's occupancy ``nu*(theta)`` whose backward is the Gaussian-smoothing
    estimate of ``<grad, d nu* / d theta>`` (module docstring)."""

    @staticmethod
    def forward(ctx: Any, log_weights: torch.Tensor, boosts: torch.Tensor, nu: torch.Tensor,
                perturbations: _Perturbations) -> torch.Tensor:
        ctx.save_for_backward(nu)
        ctx.perturbations = perturbations
        return nu.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        (nu,) = ctx.saved_tensors
        g_lw, g_b = ctx.perturbations.gradient(grad, nu)
        return g_lw, g_b, None, None


@dataclass(frozen=True)
class ZerothOrderFollower(Follower):
    """The exact follower whose occupancy carries a zeroth-order gradient (module docstring).

    The affine welfare of every problem is ``<c(theta), nu*>`` at fixed ``nu*`` (the envelope
    theorem); the full problem's occupancy goes through :class:`_SmoothedResponse`. One parameter
    vector only (no candidate dimension).

    Attributes:
        num_perturbations: Perturbations per estimate (paper: 20).
        sigma: Their standard deviation (paper: 0.05).
        generator: Random generator of the perturbations.
        antithetic: Two-sided perturbations (``2 J`` inner solves instead of ``J``).
        occupancy_fn: The follower's response map (default: exact).
        entropy_weight: ``alpha`` if ``occupancy_fn`` is the regularized response: the affine welfare
            is then its optimal value ``<c, nu> + alpha H(nu)``; 0 for the LP.
    """

    num_perturbations: int
    sigma: float
    generator: torch.Generator
    antithetic: bool = False
    occupancy_fn: OccupancyFn = exact_occupancy
    entropy_weight: float = 0.0

    def respond(
        self, mdp: TabularMDP, r: torch.Tensor, log_weights: torch.Tensor, boosts: torch.Tensor, without: bool
    ) -> FollowerSolution:
        if log_weights.dim() != 1 or boosts.dim() != 2:
            raise ValueError("the zeroth-order follower takes one parameter vector: log_weights [n], boosts [S, A]")
        free = (log_weights.requires_grad, boosts.requires_grad)
        if not any(free):
            raise ValueError("the mechanism has no free parameters")
        w, b = log_weights.exp().unsqueeze(-2), boosts.unsqueeze(-3)
        c = affine_rewards(r, w, b, without)  # [P, n + 1, S, A] or [P, S, A]
        with torch.no_grad():
            nu = self.occupancy_fn(mdp, c.detach())
        asw = (c * nu).sum((-2, -1))  # envelope theorem: no gradient through nu
        if self.entropy_weight:
            asw = asw - self.entropy_weight * torch.special.xlogy(nu, nu).sum((-2, -1))
        full = nu[:, 0] if without else nu
        perturbations = _Perturbations(self, mdp, r, log_weights.detach(), boosts.detach(), free)
        occupancy = PolicyOccupancy(mdp.shape, nu=_SmoothedResponse.apply(log_weights, boosts, full, perturbations))
        if not without:
            return FollowerSolution(occupancy, asw, None, w, r)
        return FollowerSolution(occupancy, asw[:, 0], asw[:, 1:], w, r)


class ZerothOrderEstimator(GradientEstimator):
    """The objective with :class:`ZerothOrderFollower`: the bilevel zeroth-order gradient of Sow et al."""

    config: ZerothOrderConfig

    def objective(self, ama: AMA, types: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
        cfg = self.config
        follower = ZerothOrderFollower(cfg.num_perturbations, cfg.sigma, generator, cfg.antithetic)
        ama.check_parameters()
        return leader_objective(ama.setting, ama.log_weights, ama.boosts, types, follower)


class ZerothOrder(GradientMethod):
    """Gradient steps with zeroth-order bilevel estimates (paper, section 4); see :class:`ZerothOrderConfig`."""

    name = "zeroth_order"
    Config = ZerothOrderConfig
    Estimator = ZerothOrderEstimator
