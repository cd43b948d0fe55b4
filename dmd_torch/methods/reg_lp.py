"""First-order method through the entropy-regularized follower (paper, section 4 "Regularized linear
program"; Appendix E, equation 13).

The follower's LP (equation 2) is replaced by ``max c.nu - alpha sum nu log nu``, whose solution map
is smooth; :meth:`AMA.forward` returns the regularized objective of each profile with the envelope
theorem for the affine-welfare terms (paper, Appendix C) and the gradient of ``sw(nu)`` (or the
makespan ``<q, nu>``) through the regularized solution (:func:`dmd_torch.regularized.regularized_occupancy`,
backends ``auto``, ``tree``, ``newton``, ``cvxpylayers``). Any ``torch.optim`` optimizer takes the
steps. Paper hyperparameters: ``alpha = 0.01``, 20 profiles per step, step size 0.01. Evaluation
always uses the exact, unregularized inner problem (paper, section 5).

Optionally ``alpha`` is annealed (a continuation in the entropy weight): step ``t`` of ``T`` of each
start uses ``alpha_t = alpha * (alpha_final / alpha) ** ((t - 1) / (T - 1))``, from a smooth
follower whose gradients carry information far from the optimum to a sharper one whose
regularization bias (Theorem 4.3 of the paper bounds it by ``alpha`` times the entropy) is small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dmd_torch.envs.base import Setting
from dmd_torch.mechanism import AMA
from dmd_torch.checks import check_choice, check_float
from dmd_torch.methods.gradient import GradientMethod
from dmd_torch.regularized import BACKENDS, regularized_occupancy, tree_applicable

__all__ = ["RegularizedLP"]


@dataclass
class RegularizedLP(GradientMethod):
    """Stochastic gradients of the entropy-regularized objective (paper, section 4).

    Attributes (besides those of :class:`GradientMethod`):
        alpha: Entropy weight of the follower's problem (paper: 0.01).
        backend: Regularized solver: ``auto``, ``tree``, ``newton`` or ``cvxpylayers``.
        solver_options: Options passed to the backend (e.g. ``tol`` for ``newton``).
        alpha_final: Entropy weight of each start's last step, reached geometrically from ``alpha``
            (module docstring); ``None``: ``alpha`` throughout.
    """

    name = "reg_lp"
    alpha: float = 0.01
    backend: str = "auto"
    solver_options: dict[str, Any] | None = None
    alpha_final: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.alpha = check_float("alpha", self.alpha)
        if self.alpha_final is not None:
            self.alpha_final = check_float("alpha_final", self.alpha_final)
        check_choice("backend", self.backend, BACKENDS)
        self.solver_options = dict(self.solver_options or {})
        self._alpha_now = self.alpha

    def alpha_at(self, t: int) -> float:
        """The entropy weight of gradient step ``t`` (``1..steps``) of a start."""
        if self.alpha_final is None or self.steps <= 1:
            return self.alpha
        frac = min(max(t - 1, 0), self.steps - 1) / (self.steps - 1)
        return self.alpha * (self.alpha_final / self.alpha) ** frac

    def begin_step(self, t: int) -> None:
        self._alpha_now = self.alpha_at(t)

    def check_setting(self, setting: Setting) -> None:
        super().check_setting(setting)
        if self.backend == "tree" and not tree_applicable(setting.mdp):
            raise ValueError(
                f"backend 'tree' needs a finite-horizon history-tree MDP, which {setting.name} is not; "
                f"allowed here: auto, newton, cvxpylayers"
            )
        if self.solver_options:  # a tiny dry run names unknown options before any work
            c = torch.zeros(1, *setting.mdp.shape, dtype=setting.mdp.dtype)
            try:
                regularized_occupancy(setting.mdp, c, self.alpha, backend=self.backend, **self.solver_options)
            except TypeError as err:
                raise ValueError(str(err)) from None

    def hparams(self) -> dict[str, Any]:
        out = super().hparams()
        out.update(alpha=self.alpha, alpha_final=self.alpha if self.alpha_final is None else self.alpha_final,
                   backend=self.backend)
        return out

    def gradient(self, ama: AMA, types: torch.Tensor, generator: torch.Generator) -> float:
        objective = ama(types, alpha=self._alpha_now, backend=self.backend, **self.solver_options).mean()
        loss = -objective if ama.setting.maximize else objective
        loss.backward()
        return float(objective.detach())
