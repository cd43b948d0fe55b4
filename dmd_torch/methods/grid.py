"""Random grid search over Sobol points (paper, section 5 "Grid search"; Algorithm 1, line 2).

Candidates ``(w, b)`` are scrambled, seeded Sobol points (:class:`torch.quasirandom.SobolEngine`):
boosts uniform in the setting's search box (:meth:`~dmd_torch.envs.Setting.search_box`; the paper's
``[-B, B]``) and, where the setting optimizes weights, weights mapped into ``(0, 1]`` and normalized
to sum to one. Every candidate is scored EXACTLY (the follower's LP, paper equation 2) on the same
training profiles (common random numbers; the paper uses 10,000 points and 2,000 profiles), several
candidates per batched solve of :func:`~dmd_torch.objective.leader_objective`. The best candidate
is kept; the ``top_k`` best serve as starting points of the gradient methods (Algorithm 1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.quasirandom import SobolEngine

from dmd_torch.checks import check_finite, check_int
from dmd_torch.config import GridConfig
from dmd_torch.envs.base import Setting
from dmd_torch.follower import ExactFollower
from dmd_torch.mechanism import AMA
from dmd_torch.methods.base import Callback, Method, MethodResult, StepEvent, exact_score, restore, stream_seed
from dmd_torch.objective import leader_objective

__all__ = ["GridSearch", "sobol_candidates", "score_candidates", "CANDIDATE_FOLLOWER"]

#: Grid search's follower: each candidate's large boosts dominate the rewards, so policy iteration
#: starts from the candidate's mean-reward policy (2-3x faster on the gridworld).
CANDIDATE_FOLLOWER = ExactFollower(candidate_start=True)


def sobol_candidates(ama: AMA, num_points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scrambled Sobol candidates over the parameters the setting optimizes.

    Args:
        ama: Mechanism whose fixed parameters (those without ``requires_grad``) every candidate keeps.
        num_points: Number of candidates.
        seed: Scrambling seed.

    Returns:
        ``log_weights [N, n]`` and ``boosts [N, S, A]``.
    """
    setting = ama.setting
    n = setting.n_agents
    S, A = setting.mdp.shape
    dim_b = S * A if ama.boosts.requires_grad else 0
    dim_w = n if ama.log_weights.requires_grad else 0
    if dim_b + dim_w == 0:
        raise ValueError("the mechanism has no free parameters to search over")
    engine = SobolEngine(dim_b + dim_w, scramble=True, seed=int(seed))
    u = engine.draw(num_points, dtype=torch.float64).to(ama.boosts.device)
    if dim_b:
        low, high = (x.to(u).flatten() for x in setting.search_box())
        boosts = ((2.0 * u[:, :dim_b] - 1.0) * ((high - low) / 2) + (high + low) / 2).reshape(num_points, S, A)
    else:
        boosts = ama.boosts.detach().expand(num_points, S, A).clone()
    if dim_w:
        w = 1.0 - u[:, dim_b:]  # (0, 1]
        log_weights = (w / w.sum(-1, keepdim=True)).log()
    else:
        log_weights = ama.log_weights.detach().expand(num_points, n).clone()
    return log_weights.to(ama.boosts.dtype), boosts.to(ama.boosts.dtype)


def score_candidates(
    setting: Setting,
    log_weights: torch.Tensor,
    boosts: torch.Tensor,
    types: torch.Tensor,
    max_batch_elements: int,
    on_batch: Any = None,
) -> torch.Tensor:
    """Mean exact objective of each candidate on the common profiles ``types``, ``[C]``.

    Each batched solve covers ``candidates x profiles x problems x S x A <= max_batch_elements``
    (at least one candidate and one profile; ``n + 1`` problems per profile where the objective
    needs the problems without each agent, else one): several candidates per solve when the
    profiles are few, else one candidate on chunks of the profiles (small batches stay in cache and
    run faster). The rewards depend on the profiles only and are computed once.

    Args:
        setting: The setting.
        log_weights: ``[C, n]``.
        boosts: ``[C, S, A]``.
        types: Common profiles ``[P, n, K]``.
        max_batch_elements: Bound on the elements of one batched solve.
        on_batch: Optional ``f(scores: Tensor)`` called with the scores of each finished group of candidates.
    """
    check_int("max_batch_elements", max_batch_elements)
    for name, x in (("grid log-weights", log_weights), ("grid boosts", boosts)):
        check_finite(name, x)
    S, A = setting.mdp.shape
    per_profile = ((setting.n_agents + 1) if setting.objective.needs_without else 1) * S * A
    P = types.shape[0]
    chunk = max(1, min(P, max_batch_elements // per_profile))
    batch = max(1, max_batch_elements // (per_profile * P)) if chunk == P else 1
    r = setting.checked_rewards(types)
    chunks = list(zip(types.split(chunk), r.split(chunk)))
    out = []
    for lw, b in zip(log_weights.split(batch), boosts.split(batch)):
        total = sum(leader_objective(setting, lw, b, t, CANDIDATE_FOLLOWER, r=rr).sum(-1) for t, rr in chunks)
        out.append(total / P)
        if on_batch is not None:
            on_batch(out[-1])
    return torch.cat(out)


class GridSearch(Method):
    """Sobol grid search, exact scores on common profiles (paper, section 5); see :class:`GridConfig`."""

    name = "grid"
    Config = GridConfig

    def total_work(self) -> int:
        return self.config.num_points

    def training_profiles(self, setting: Setting, seed: int = 0) -> torch.Tensor:
        """The common profiles every candidate is scored on, ``[profiles, n, K]``."""
        gen = torch.Generator().manual_seed(stream_seed(seed, "grid-profiles"))
        return setting.checked_sample(self.config.profiles, gen)

    def run(
        self,
        ama: AMA,
        *,
        heldout: torch.Tensor,
        seed: int = 0,
        callback: Callback | None = None,
    ) -> MethodResult:
        """Scores all candidates, sets ``ama`` to the best and returns the ``top_k`` best."""
        cfg = self.config
        setting = ama.setting
        self.check_setting(setting)
        types = self.training_profiles(setting, seed).to(ama.boosts.device)
        log_weights, boosts = sobol_candidates(ama, cfg.num_points, stream_seed(seed, "grid-sobol") % 2**31)
        sign = setting.objective.sign
        done = [0, -float("inf")]  # candidates scored, best score (sign * objective)

        def report(scores: torch.Tensor) -> None:
            done[0] += scores.numel()
            done[1] = max(done[1], float((sign * scores).max()))
            if callback is not None:
                callback(StepEvent("grid", done[0], 0, scores.numel(), ama, objective=sign * done[1]))

        scores = score_candidates(setting, log_weights, boosts, types, cfg.max_batch_elements, report)
        order = torch.argsort(sign * scores, descending=True, stable=True)[: cfg.top_k]
        top = [(float(scores[k]), log_weights[k].clone(), boosts[k].clone()) for k in order.tolist()]
        restore(ama, (top[0][1], top[0][2]))
        held = exact_score(ama, heldout)
        if callback is not None:
            callback(StepEvent("grid", done[0], 0, 0, ama, objective=top[0][0], heldout=held, best=held))
        return MethodResult(
            ama=ama,
            heldout=held,
            candidates=cfg.num_points,
            history=[{"step": cfg.num_points, "start": 0, "heldout": held}],
            top=top,
        )
