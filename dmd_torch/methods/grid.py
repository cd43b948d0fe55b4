"""Random grid search over Sobol points (paper, section 5 "Grid search"; Algorithm 1, line 2).

Candidates ``(w, b)`` are scrambled, seeded Sobol points (:class:`torch.quasirandom.SobolEngine`):
boosts uniform in ``[-B, B]`` with the setting's ``boost_range`` ``B`` (spec, "Sobol boost
ranges") and, where the setting optimizes weights, weights mapped into ``(0, 1]`` and normalized to
sum to one. Every candidate is scored EXACTLY (the follower's LP, paper equation 2, by dynamic
programming) on the same training profiles (common random numbers; the paper uses 10,000 points and
2,000 profiles). Candidates are scored in batches: the affine rewards of several candidates are
stacked into one batched :func:`~dmd_torch.exact.solve_exact` call. The best candidate is kept;
the ``top_k`` best serve as starting points of the gradient methods (Algorithm 1).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch.quasirandom import SobolEngine

from dmd_torch.envs.base import Setting
from dmd_torch.exact import mean_reward_policy, policy_occupancy, solve_exact
from dmd_torch.mechanism import AMA, affine_problems, affine_rewards, payments, welfare_without
from dmd_torch.checks import check_finite, check_int
from dmd_torch.evaluation import MAX_BATCH_ELEMENTS
from dmd_torch.methods.base import (
    Callback,
    Method,
    MethodResult,
    StepEvent,
    exact_score,
    restore,
    stream_seed,
)

__all__ = ["GridSearch", "sobol_candidates", "candidate_objectives", "score_candidates"]


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
        boosts = ((2.0 * u[:, :dim_b] - 1.0) * setting.boost_range).reshape(num_points, S, A)
    else:
        boosts = ama.boosts.detach().expand(num_points, S, A).clone()
    if dim_w:
        w = 1.0 - u[:, dim_b:]  # (0, 1]
        log_weights = (w / w.sum(-1, keepdim=True)).log()
    else:
        log_weights = ama.log_weights.detach().expand(num_points, n).clone()
    return log_weights.to(ama.boosts.dtype), boosts.to(ama.boosts.dtype)


def _check_finite(r: torch.Tensor, log_weights: torch.Tensor, boosts: torch.Tensor) -> None:
    for name, x in (("grid rewards", r), ("grid log-weights", log_weights), ("grid boosts", boosts)):
        check_finite(name, x)


def candidate_objectives(
    setting: Setting,
    log_weights: torch.Tensor,
    boosts: torch.Tensor,
    types: torch.Tensor,
    r: torch.Tensor | None = None,
    check_finite: bool = True,
    loss: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact objective of ``C`` candidate AMAs on ``P`` profiles in one batched solve, ``[C, P]``.

    Same formulas as :meth:`AMA.outcome` (revenue ``sum_i p_i`` with the payments of
    :func:`~dmd_torch.mechanism.payments`, or the loss ``<q, nu>``).

    Args:
        setting: The setting.
        log_weights: ``[C, n]``.
        boosts: ``[C, S, A]``.
        types: Type profiles ``[P, n, K]``.
        r: ``setting.rewards(types)`` if already computed.
        check_finite: Reject NaN/inf rewards or parameters (callers that checked them may skip the scan).
        loss: ``setting.loss_vector(types)`` if already computed (loss settings; it does not depend
            on the candidate, so callers scoring many candidates compute it once).
    """
    r = setting.rewards(types) if r is None else r
    mdp = setting.mdp
    with torch.no_grad():
        if check_finite:
            _check_finite(r, log_weights, boosts)
        if not setting.maximize:
            c = affine_rewards(r.unsqueeze(0), log_weights.exp()[:, None], boosts[:, None], without=False)
            start = mean_reward_policy(mdp, c, (1,))  # per candidate (discounted MDPs)
            policy = solve_exact(mdp, c, check_finite=False, occupancy=False, init_policy=start, q=False).policy
            q = setting.loss_vector(types) if loss is None else loss
            return policy_occupancy(mdp, policy).inner(q)  # [C, P]
        # the full problem [C, P, S, A] needs its policy, the n without each agent [C, P, n, S, A] their values
        w = log_weights.exp()[:, None]  # [C, 1, n]
        total, minus = affine_problems(r.unsqueeze(0), w, boosts[:, None])
        start = mean_reward_policy(mdp, total, (1,))  # per candidate (discounted MDPs)
        sol = solve_exact(mdp, total, check_finite=False, occupancy=False, init_policy=start, q=False)
        V = policy_occupancy(mdp, sol.policy).inner(r, extra=1)  # [C, P, n]
        init = None if start is None else start.unsqueeze(1)
        asw_without = welfare_without(mdp, r, minus, sol.value, V, init_policy=init)
        return payments(V, w, sol.value, asw_without).sum(-1)


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
    (at least one candidate and one profile; ``n + 1`` problems per profile for revenue, one for a
    loss such as the makespan): several candidates per solve when the profiles are few, else one
    candidate on chunks of the profiles (small batches stay in cache and run faster). The rewards and
    the loss vector depend on the profiles only and are computed once.

    Args:
        setting: The setting.
        log_weights: ``[C, n]``.
        boosts: ``[C, S, A]``.
        types: Common profiles ``[P, n, K]``.
        max_batch_elements: Bound on the elements of one batched solve.
        on_batch: Optional ``f(scores: Tensor)`` called with the scores of each finished group of candidates.
    """
    check_int("max_batch_elements", max_batch_elements)
    S, A = setting.mdp.shape
    per_profile = ((setting.n_agents + 1) if setting.maximize else 1) * S * A
    P = types.shape[0]
    chunk = max(1, min(P, max_batch_elements // per_profile))
    batch = max(1, max_batch_elements // (per_profile * P)) if chunk == P else 1
    r = setting.rewards(types)
    _check_finite(r, log_weights, boosts)
    with torch.no_grad():
        q = None if setting.maximize else setting.loss_vector(types)
    chunks = list(zip(types.split(chunk), r.split(chunk), itertools.repeat(None) if q is None else q.split(chunk)))
    out = []
    for lw, b in zip(log_weights.split(batch), boosts.split(batch)):
        total = sum(
            candidate_objectives(setting, lw, b, t, rr, check_finite=False, loss=qq).sum(-1)
            for t, rr, qq in chunks
        )
        out.append(total / P)
        if on_batch is not None:
            on_batch(out[-1])
    return torch.cat(out)


@dataclass
class GridSearch(Method):
    """Sobol grid search, exact scores on common profiles (paper, section 5).

    Attributes:
        num_points: Sobol candidates (paper: 10,000).
        profiles: Common training profiles per candidate (paper: 2,000).
        top_k: How many best candidates to return in :attr:`MethodResult.top` (multi-start).
        max_batch_elements: Bound on ``candidates x profiles x (n + 1) x S x A`` per batched solve.
    """

    name = "grid"
    num_points: int = 10_000
    profiles: int = 2_000
    top_k: int = 1
    max_batch_elements: int = MAX_BATCH_ELEMENTS

    def __post_init__(self) -> None:
        check_int("grid num_points", self.num_points)
        check_int("grid profiles", self.profiles)
        check_int("grid top_k", self.top_k)
        check_int("grid max_batch_elements", self.max_batch_elements)
        if self.top_k > self.num_points:
            raise ValueError(f"grid top_k must be <= num_points = {self.num_points}, got {self.top_k}")

    def total_work(self) -> int:
        return self.num_points

    def hparams(self) -> dict[str, Any]:
        return {"method": self.name, "num_points": self.num_points, "profiles": self.profiles, "top_k": self.top_k}

    def training_profiles(self, setting: Setting, seed: int = 0) -> torch.Tensor:
        """The common profiles every candidate is scored on, ``[profiles, n, K]``."""
        gen = torch.Generator().manual_seed(stream_seed(seed, "grid-profiles"))
        return setting.sample_types(self.profiles, gen)

    def run(
        self,
        ama: AMA,
        *,
        heldout: torch.Tensor,
        seed: int = 0,
        callback: Callback | None = None,
    ) -> MethodResult:
        """Scores all candidates, sets ``ama`` to the best and returns the ``top_k`` best."""
        setting = ama.setting
        self.check_setting(setting)
        device = ama.boosts.device
        types = self.training_profiles(setting, seed).to(device)
        log_weights, boosts = sobol_candidates(ama, self.num_points, stream_seed(seed, "grid-sobol") % 2**31)
        sign = 1.0 if setting.maximize else -1.0
        done = [0, -float("inf")]  # candidates scored, best score (sign * objective)

        def report(scores: torch.Tensor) -> None:
            done[0] += scores.numel()
            done[1] = max(done[1], float((sign * scores).max()))
            if callback is not None:
                callback(StepEvent("grid", done[0], 0, scores.numel(), ama, objective=sign * done[1]))

        scores = score_candidates(setting, log_weights, boosts, types, self.max_batch_elements, report)
        order = torch.argsort(sign * scores, descending=True, stable=True)[: self.top_k]
        top = [(float(scores[k]), log_weights[k].clone(), boosts[k].clone()) for k in order.tolist()]
        restore(ama, (top[0][1], top[0][2]))
        held = exact_score(ama, heldout)
        if callback is not None:
            callback(StepEvent("grid", done[0], 0, 0, ama, objective=top[0][0], heldout=held, best=held))
        return MethodResult(
            ama=ama,
            heldout=held,
            candidates=self.num_points,
            history=[{"step": self.num_points, "start": 0, "heldout": held}],
            top=top,
        )
