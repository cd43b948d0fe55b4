"""First-order method through the entropy-regularized follower (paper, section 4 "Regularized linear
program"; Appendix E, equation 13).

The follower's LP (equation 2) is replaced by ``max c.nu - alpha sum nu log nu``, whose solution map
is smooth; :meth:`AMA.forward` returns the regularized objective of each profile with the envelope
theorem for the affine-welfare terms (paper, Appendix C) and the gradient of the agents' values (or
the loss ``<q, nu>``) through the regularized solution (:mod:`dmd_torch.regularized`). Evaluation
always uses the exact, unregularized inner problem (paper, section 5).

Optionally ``alpha`` is annealed (a continuation in the entropy weight): step ``t`` of ``T`` of each
start uses ``alpha_t = alpha * (alpha_final / alpha) ** ((t - 1) / (T - 1))``, from a smooth
follower whose gradients carry information far from the optimum to a sharper one whose
regularization bias (Theorem 4.3 of the paper bounds it by ``alpha`` times the entropy) is small.
"""

from __future__ import annotations

import torch

from dmd_torch.config import RegLPConfig
from dmd_torch.envs.base import Setting
from dmd_torch.mechanism import AMA
from dmd_torch.methods.gradient import GradientEstimator, GradientMethod
from dmd_torch.mdp import TabularMDP
from dmd_torch.regularized import Backend, make_backend

__all__ = ["RegularizedEstimator", "RegularizedLP"]


class RegularizedEstimator(GradientEstimator):
    """The exact gradient of the regularized objective :meth:`AMA.forward` at step ``t``'s ``alpha``."""

    config: RegLPConfig

    def __init__(self, config: RegLPConfig) -> None:
        super().__init__(config)
        self._built: tuple[TabularMDP, Backend] | None = None  # the backend of the last MDP asked for

    def alpha_at(self, t: int) -> float:
        """The entropy weight of gradient step ``t`` (``1..steps``) of a start."""
        cfg = self.config
        if cfg.alpha_final is None or cfg.steps <= 1:
            return cfg.alpha
        frac = min(max(t - 1, 0), cfg.steps - 1) / (cfg.steps - 1)
        return cfg.alpha * (cfg.alpha_final / cfg.alpha) ** frac

    def check_setting(self, setting: Setting) -> None:
        """The backend must apply to the setting's MDP and take the options (checked without a solve)."""
        self.backend(setting.mdp)

    def backend(self, mdp: TabularMDP) -> Backend:
        """The configured backend for ``mdp``, built once per MDP."""
        if self._built is None or self._built[0] is not mdp:
            self._built = (mdp, make_backend(mdp, self.config.backend, self.config.solver_options))
        return self._built[1]

    def objective(self, ama: AMA, types: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
        return ama(types, alpha=self.alpha_at(step), backend=self.backend(ama.setting.mdp))


class RegularizedLP(GradientMethod):
    """Stochastic gradients of the entropy-regularized objective (paper, section 4); see :class:`RegLPConfig`."""

    name = "reg_lp"
    Config = RegLPConfig
    Estimator = RegularizedEstimator
