"""The entropy-regularized follower problem and its derivative in the rewards (paper, section 4).

The paper's first-order method (Appendix E, equation 13) replaces the occupancy LP (equation 2) by
the strictly concave program

    maximize_nu   sum_{s,a} c(s,a) nu(s,a) - alpha * sum_{s,a} nu(s,a) log nu(s,a)
    subject to    sum_a nu(s,a) = gamma * sum_{s',a'} P(s | s',a') nu(s',a') + mu0(s),   nu >= 0,

``M nu = mu0`` with the flow matrix of :meth:`~dmd_torch.mdp.TabularMDP.flow_matrix`. Its solution
map ``c -> nu`` is smooth. :func:`regularized_occupancy` solves a batch with one backend, one small
class each, and differentiates it with autograd:

* ``tree`` (:mod:`~dmd_torch.regularized.tree`): closed form on history trees, where
  :func:`tree_revenue` also gives the regularized revenue and its gradient in closed form;
* ``newton`` (:mod:`~dmd_torch.regularized.newton`): dual Newton, implicit gradients, any MDP;
* ``cvxpylayers`` (:mod:`~dmd_torch.regularized.layer`): a ``CvxpyLayer`` of exponential cones.

``auto`` picks the first of ``tree``, ``newton`` that applies. Each backend takes typed options; an
option the chosen backend does not take is an error.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch

from dmd_torch.mdp import TabularMDP
from dmd_torch.regularized.base import Backend
from dmd_torch.regularized.flow import RegularizedSolveError, flow_residual
from dmd_torch.regularized.layer import CvxpyLayersBackend
from dmd_torch.regularized.newton import NewtonBackend
from dmd_torch.regularized.systems import implicit_occupancy_vjp, leaf_elimination
from dmd_torch.regularized.tree import TreeBackend, tree_applicable, tree_revenue

__all__ = [
    "BACKENDS",
    "AUTO",
    "Backend",
    "RegularizedSolveError",
    "choose_backend",
    "make_backend",
    "newton_system_size",
    "regularized_occupancy",
    "tree_applicable",
    "tree_revenue",
    "implicit_occupancy_vjp",
    "flow_residual",
]

#: The backends by name.
BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (TreeBackend, NewtonBackend, CvxpyLayersBackend)}
#: What ``auto`` tries, in order.
AUTO: tuple[str, ...] = ("tree", "newton")


def choose_backend(mdp: TabularMDP, backend: str = "auto") -> type[Backend]:
    """The backend class ``backend`` names (``auto``: the first of :data:`AUTO` that applies to ``mdp``).

    Raises:
        ValueError: On an unknown name, or a backend that does not apply to ``mdp`` (one line, with
            the reason and the backends that do).
    """
    if backend == "auto":
        return next(BACKENDS[name] for name in AUTO if BACKENDS[name].why_not(mdp) is None)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(map(repr, ('auto', *BACKENDS)))}")
    cls = BACKENDS[backend]
    why = cls.why_not(mdp)
    if why is not None:
        fits = [name for name, b in BACKENDS.items() if b.why_not(mdp) is None]
        raise ValueError(f"backend {backend!r} does not apply here: {why}; allowed here: {', '.join(['auto', *fits])}")
    return cls


def make_backend(mdp: TabularMDP, backend: str = "auto", options: Mapping[str, Any] | None = None) -> Backend:
    """The backend for ``mdp`` with its options checked (no solve): the one place a backend is picked."""
    cls = choose_backend(mdp, backend)
    return cls(cls.parse_options(dict(options or {})))


def newton_system_size(mdp: TabularMDP, backend: str = "auto") -> int:
    """Order ``N`` of the dense system that each Newton iteration factors per problem (work ``~N^3``):
    the states left after the leaves are eliminated, else all ``S``; 0 where ``backend`` is not the
    dual Newton one (the tree's closed form factors nothing)."""
    if choose_backend(mdp, backend) is not NewtonBackend:
        return 0
    plan = leaf_elimination(mdp)
    return mdp.num_states if plan is None else plan.sizes[0]


def regularized_occupancy(
    mdp: TabularMDP,
    c: torch.Tensor,
    alpha: float,
    backend: str | Backend = "auto",
    grouped: bool = False,
    **options: Any,
) -> torch.Tensor:
    """Solves the entropy-regularized occupancy program for a batch of rewards, differentiably.

    ``max_nu c.nu - alpha sum nu log nu`` subject to ``M nu = mu0``, ``nu >= 0`` (paper, Appendix E,
    equation 13).

    Args:
        mdp: The MDP.
        c: Rewards ``[..., S, A]``; leading dimensions are flattened into one batch and restored.
        alpha: Entropy weight, positive and finite.
        backend: ``auto``, ``tree``, ``newton``, ``cvxpylayers``, or a :class:`Backend` built by
            :func:`make_backend` (then ``options`` must be empty).
        grouped: ``c[..., K, S, A]`` holds groups of ``K`` related problems whose first is the head,
            as the ``n + 1`` follower problems of a profile; a backend may start the others from the
            head's solution (the result is the same to the solver's tolerance).
        **options: The backend's options (:class:`~dmd_torch.regularized.newton.NewtonOptions`,
            :class:`~dmd_torch.regularized.layer.CvxpyLayersOptions`; ``tree`` takes none).

    Returns:
        Occupancies ``nu[..., S, A]`` in the MDP's dtype.

    Raises:
        ValueError: On an unknown or inapplicable backend, an option it does not take, a bad value,
            or bad ``alpha`` or ``c``.
        TypeError: On an ``alpha`` that is not a real number or a ``c`` that is not floating point.
        RegularizedSolveError: If the solver fails on some batch entries (named in the message).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be positive and finite, got {alpha}")
    mdp.check_rewards(c)
    if not c.is_floating_point():
        raise TypeError(f"c must be a floating-point tensor, got {c.dtype}")
    if isinstance(backend, Backend):
        if options:
            raise ValueError("pass options to make_backend, not beside a built backend")
        solver = backend
    else:
        solver = make_backend(mdp, backend, options)
    lead = tuple(c.shape[:-2])
    if grouped and not lead:
        raise ValueError("grouped=True needs c[..., K, S, A] with a group dimension K")
    flat = c.reshape(-1, *mdp.shape).to(mdp.dtype)
    if flat.shape[0] == 0:  # an empty batch: nothing to solve
        return flat.reshape(*lead, *mdp.shape) * 0.0
    group = lead[-1] if grouped else 1
    return solver.solve(mdp, flat, alpha, lead, group).reshape(*lead, *mdp.shape)
