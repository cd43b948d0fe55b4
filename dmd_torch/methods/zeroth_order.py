"""Zeroth-order bilevel gradients (paper, section 4 "Zeroth-order methods"; Sow, Ji & Liang 2022).

The leader's loss at a profile splits into a part with an explicit dependence on the parameters
``theta = (log w, b)`` at fixed follower occupancies and a part that depends on ``theta`` only through
the follower's best response ``nu*(theta)``:

* revenue (paper, section 4): ``rev = sw(nu*) + sum_i (asw^(-i) - asw) / w_i``. The affine-welfare
  terms are optimal values of the follower's LP, so by the envelope theorem (paper, Appendix C)
  ``d asw / d theta = <d c / d theta, nu*>`` at fixed ``nu*``; with the explicit ``1 / w_i`` this is
  the *direct* partial derivative, computed by autograd (:func:`direct_loss`). The best-response
  part is ``sw(nu*(theta))``.
* makespan: ``<q, nu*(theta)>`` is all best-response part.

The best-response part is piecewise constant in ``theta`` (``nu*`` is a vertex of the LP), so its
gradient is estimated by Gaussian smoothing (:func:`gaussian_smoothing_gradient`):
``g = (1 / sigma^2) E_u[(L_br(theta + u) - L_br(theta)) u]``, ``u ~ N(0, sigma^2 I)``, with exact
inner solves of all perturbed problems in one batched call (:func:`perturbed_response_losses`).
Paper hyperparameters: 20 perturbations of std 0.05, 20 profiles per step, step size 0.1.

Only the parameters the setting optimizes are perturbed. The response map is pluggable
(``occupancy_fn``), so the estimator can be checked against autograd on the smooth, regularized
follower problem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dmd_torch.envs.base import Setting
from dmd_torch.exact import solve_exact
from dmd_torch.mdp import TabularMDP
from dmd_torch.mechanism import AMA, affine_rewards
from dmd_torch.checks import check_float, check_int
from dmd_torch.methods.base import free_parameters
from dmd_torch.methods.gradient import GradientMethod

__all__ = [
    "ZerothOrder",
    "OccupancyFn",
    "exact_occupancy",
    "direct_loss",
    "response_loss",
    "perturbed_response_losses",
    "gaussian_smoothing_gradient",
    "bilevel_gradient",
]

#: A follower response map: rewards ``c[..., S, A]`` to occupancies ``nu[..., S, A]`` (no gradient).
OccupancyFn = Callable[[TabularMDP, torch.Tensor], torch.Tensor]


def exact_occupancy(mdp: TabularMDP, c: torch.Tensor) -> torch.Tensor:
    """The follower's exact best response (paper, equation 2), batched over leading dimensions."""
    return solve_exact(mdp, c.detach()).occupancy


def direct_loss(ama: AMA, r: torch.Tensor, nu: torch.Tensor, entropy_weight: float = 0.0) -> torch.Tensor:
    """Mean loss terms with an explicit parameter dependence, at fixed occupancies (differentiable).

    For revenue ``-sum_i (asw^(-i) - asw) / w_i`` with ``asw = <c, nu>`` at fixed ``nu`` (envelope
    theorem); zero for a loss such as the makespan.

    Args:
        ama: The mechanism.
        r: Agent rewards ``[P, n, S, A]``.
        nu: Follower occupancies of all ``n + 1`` problems ``[P, n + 1, S, A]`` (revenue), detached.
        entropy_weight: ``alpha`` when ``nu`` solves the entropy-regularized problem: ``asw`` is then
            its optimal value ``<c, nu> + alpha H(nu)`` (as in :meth:`AMA.forward`); 0 for the LP.
    """
    if not ama.setting.maximize:
        return sum(p.sum() for p in free_parameters(ama)) * 0.0
    nu = nu.detach()
    asw = (ama.affine_rewards(r) * nu).sum((-2, -1))  # [P, n + 1]
    if entropy_weight:
        asw = asw - entropy_weight * torch.special.xlogy(nu, nu).sum((-2, -1))
    return -((asw[:, 1:] - asw[:, :1]) / ama.weights).sum(-1).mean()


def response_loss(setting: Setting, types: torch.Tensor, r: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
    """The loss part that depends on the follower's solution, per profile.

    ``-sw(nu)`` for revenue, ``<q, nu>`` for a loss.

    Args:
        setting: The setting.
        types: Profiles ``[P, n, K]``.
        r: Their rewards ``[P, n, S, A]``.
        nu: Occupancies of the full problem ``[..., P, S, A]``.

    Returns:
        ``[..., P]``.
    """
    if setting.maximize:
        return -(r.sum(1) * nu).sum((-2, -1))
    return (setting.loss_vector(types).to(nu) * nu).sum((-2, -1))


def perturbed_response_losses(
    ama: AMA,
    types: torch.Tensor,
    r: torch.Tensor,
    delta_log_weights: torch.Tensor,
    delta_boosts: torch.Tensor,
    occupancy_fn: OccupancyFn = exact_occupancy,
) -> torch.Tensor:
    """Mean best-response loss at ``J`` perturbed parameters, one batched inner solve, ``[J]``.

    Args:
        ama: The mechanism at ``theta``.
        types: Profiles ``[P, n, K]`` (common to all perturbations).
        r: Their rewards ``[P, n, S, A]``.
        delta_log_weights: Perturbations of ``log w`` ``[J, n]``.
        delta_boosts: Perturbations of ``b`` ``[J, S, A]``.
        occupancy_fn: The follower's response map.
    """
    with torch.no_grad():
        lw = ama.log_weights.detach().unsqueeze(0) + delta_log_weights
        b = ama.boosts.detach().unsqueeze(0) + delta_boosts
        c = affine_rewards(r.unsqueeze(0), lw.exp()[:, None], b[:, None], without=False)  # [J, P, S, A]
        nu = occupancy_fn(ama.setting.mdp, c)
        return response_loss(ama.setting, types, r, nu).mean(-1)


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


def bilevel_gradient(
    ama: AMA,
    types: torch.Tensor,
    num_perturbations: int,
    sigma: float,
    generator: torch.Generator,
    occupancy_fn: OccupancyFn = exact_occupancy,
    antithetic: bool = False,
    entropy_weight: float = 0.0,
) -> tuple[float, list[torch.Tensor]]:
    """Zeroth-order bilevel estimate of the loss gradient on a mini-batch of profiles.

    ``grad = d direct_loss / d theta`` (autograd at fixed occupancies) ``+`` the Gaussian-smoothing
    estimate of ``d E[response_loss(nu*(theta))] / d theta`` (common profiles for all perturbations).

    Args:
        ama: The mechanism; only its free parameters (``requires_grad``) are perturbed.
        types: Profiles ``[P, n, K]``.
        num_perturbations: Perturbations per estimate (paper: 20).
        sigma: Their standard deviation (paper: 0.05).
        generator: Random generator of the perturbations.
        occupancy_fn: The follower's response map (default: exact).
        antithetic: Two-sided perturbations (``2 J`` inner solves instead of ``J + 1``).
        entropy_weight: ``alpha`` if ``occupancy_fn`` is the regularized response (see :func:`direct_loss`).

    Returns:
        The loss on the batch (``-revenue`` or the loss) and one gradient per free parameter, in the
        order of :func:`free_parameters`.
    """
    setting = ama.setting
    params = free_parameters(ama)
    if not params:
        raise ValueError("the mechanism has no free parameters")
    r = setting.rewards(types)
    with torch.no_grad():
        c = ama.affine_rewards(r)
        nu = occupancy_fn(setting.mdp, c if setting.maximize else c[:, :1])
    direct = direct_loss(ama, r, nu, entropy_weight)
    grads = list(torch.autograd.grad(direct, params, allow_unused=True, materialize_grads=True))
    base = response_loss(setting, types, r, nu[:, 0]).mean()

    n = setting.n_agents
    S, A = setting.mdp.shape
    sizes = [p.numel() for p in params]

    def f(u: torch.Tensor) -> torch.Tensor:
        parts = dict(zip([id(p) for p in params], u.split(sizes, dim=1)))
        J = u.shape[0]
        dlw = parts.get(id(ama.log_weights), torch.zeros(J, n, dtype=u.dtype)).reshape(J, n)
        db = parts.get(id(ama.boosts), torch.zeros(J, S * A, dtype=u.dtype)).reshape(J, S, A)
        return perturbed_response_losses(ama, types, r, dlw.to(r), db.to(r), occupancy_fn)

    g, _ = gaussian_smoothing_gradient(
        f, sum(sizes), num_perturbations, sigma, generator, f0=base, antithetic=antithetic, dtype=r.dtype
    )
    for k, part in enumerate(g.split(sizes)):
        grads[k] = grads[k] + part.reshape(params[k].shape).to(grads[k])
    return float(direct.detach() + base), grads


@dataclass
class ZerothOrder(GradientMethod):
    """Gradient descent with zeroth-order bilevel gradient estimates (paper, section 4).

    Attributes (besides those of :class:`GradientMethod`):
        num_perturbations: Gaussian perturbations per estimate (paper: 20).
        sigma: Their standard deviation (paper: 0.05).
        antithetic: Use two-sided (antithetic) perturbations.
    """

    name = "zeroth_order"
    num_perturbations: int = 20
    sigma: float = 0.05
    antithetic: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("num_perturbations", self.num_perturbations)
        self.sigma = check_float("sigma", self.sigma)
        if not isinstance(self.antithetic, bool):
            raise ValueError(f"antithetic must be true or false, got {self.antithetic!r}")

    def hparams(self) -> dict[str, Any]:
        out = super().hparams()
        out.update(num_perturbations=self.num_perturbations, sigma=self.sigma, antithetic=self.antithetic)
        return out

    def gradient(self, ama: AMA, types: torch.Tensor, generator: torch.Generator) -> float:
        loss, grads = bilevel_gradient(
            ama, types, self.num_perturbations, self.sigma, generator, antithetic=self.antithetic
        )
        for p, g in zip(free_parameters(ama), grads):
            p.grad = g.detach().clone()
        return loss if not ama.setting.maximize else -loss
