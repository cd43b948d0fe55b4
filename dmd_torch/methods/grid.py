"""Grid search over Sobol points (paper, section 5 "Grid search"; Algorithm 1, line 2), refined locally.

Candidates ``(w, b)`` are points ``u`` of the unit cube (:class:`torch.quasirandom.SobolEngine`)
mapped by :func:`candidates_from_unit`: boosts uniform in the setting's search box
(:meth:`~dmd_torch.envs.Setting.search_box`; the paper's ``[-B, B]``) scaled about its centre
and, where the setting optimizes weights, ``w = 1 - u`` normalized to sum to one. The centre of the
cube is the centre of the box with equal weights: VCG wherever the box is symmetric. Every
candidate is scored EXACTLY (the follower's LP, paper equation 2) on the same training profiles
(common random numbers; the paper uses 10,000 points and 2,000 profiles), several candidates per
batched solve of :func:`~dmd_torch.objective.leader_objective`.

The search (:class:`GridSearch`, :class:`~dmd_torch.config.GridConfig`) scores the centre, then
global Sobol points, then rounds of Sobol points in shrinking cubes around the best candidate so
far. Each round is screened: every candidate is scored on the first ``screen_profiles`` of the
common profiles, and only the best ``screen_keep`` share (the centre always) on all of them, the
score the search ranks by; with common profiles the screen ranks much as the full score does
(the same best candidate on sales, scheduling and the gridworld at a fifth of the time).
The paper variant is the authors' sequence: unscrambled Sobol without its all-zero point
(so the centre comes first), no refinement, no screening. The best candidate is kept; the ``top_k`` best serve
as starting points of the gradient methods (Algorithm 1).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.quasirandom import SobolEngine

from dmd_torch.checks import check_finite, check_int
from dmd_torch.config import GridConfig
from dmd_torch.cost import candidate_batches, setting_elements
from dmd_torch.envs.base import Setting
from dmd_torch.follower import ExactFollower
from dmd_torch.mechanism import AMA
from dmd_torch.methods.base import (
    Callback,
    Method,
    MethodResult,
    StepEvent,
    exact_score,
    height_groups,
    restore,
    stream_seed,
)
from dmd_torch.objective import leader_objective

__all__ = [
    "GridSearch",
    "sobol_candidates",
    "sobol_unit",
    "local_points",
    "candidates_from_unit",
    "boost_groups",
    "boost_dimensions",
    "free_dimensions",
    "score_candidates",
    "CANDIDATE_FOLLOWER",
]

#: Grid search's follower: each candidate's large boosts dominate the rewards, so policy iteration
#: starts from the candidate's mean-reward policy (2-3x faster on the gridworld).
CANDIDATE_FOLLOWER = ExactFollower(candidate_start=True)

_U_MAX = 1.0 - 1e-6  # u below 1: every weight 1 - u stays positive


def boost_groups(setting: Setting, tied: bool) -> list[torch.Tensor]:
    """The search coordinates of the boosts: per group, each boost's coordinate ``[S * A]``. One
    coordinate per (state, action); with ``tied`` in an acyclic MDP also one per (height, action),
    shared by the states as many steps from the end. A boost is the sum of its coordinates."""
    S, A = setting.mdp.shape
    groups = [torch.arange(S * A)]
    by_height = height_groups(setting) if tied else None
    if by_height is not None:
        groups.insert(0, by_height)
    return groups


def boost_dimensions(setting: Setting, tied: bool = False) -> int:
    """Search coordinates of the boosts: the groups of :func:`boost_groups` together."""
    return sum(int(g.max()) + 1 for g in boost_groups(setting, tied))


def free_dimensions(ama: AMA, tied: bool = False) -> tuple[int, int]:
    """``(boost coordinates, weight coordinates)`` a search moves (those with ``requires_grad``;
    boost coordinates as in :func:`boost_groups`)."""
    dim_b = boost_dimensions(ama.setting, tied) if ama.boosts.requires_grad else 0
    dim_w = ama.setting.n_agents if ama.log_weights.requires_grad else 0
    if dim_b + dim_w == 0:
        raise ValueError("the mechanism has no free parameters to search over")
    return dim_b, dim_w


def sobol_unit(dim: int, num_points: int, seed: int, scramble: bool = True) -> torch.Tensor:
    """``num_points`` Sobol points of ``[0, 1)^dim``, ``[N, dim]`` (float64): seeded and scrambled,
    or the unscrambled sequence without its first, all-zero point (Sobol.jl's, the authors')."""
    engine = SobolEngine(dim, scramble=scramble, seed=int(seed) if scramble else None)
    if not scramble:
        engine.fast_forward(1)
    return engine.draw(num_points, dtype=torch.float64)


def candidates_from_unit(
    ama: AMA, u: torch.Tensor, box_scale: float = 1.0, tied: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidates of unit-cube points ``u [N, dim_b + dim_w]`` (:func:`free_dimensions`).

    Boosts: the box's centre plus, per coordinate of :func:`boost_groups`,
    ``(2u - 1) * box_scale * half-width`` of the box spanning its boosts' boxes; weights: ``w = 1 - u``
    normalized to sum to one (the centre ``u = 1/2``: equal weights). Fixed parameters keep
    ``ama``'s values.

    Returns:
        ``log_weights [N, n]`` and ``boosts [N, S, A]`` in ``ama``'s dtype and device.
    """
    setting = ama.setting
    n = setting.n_agents
    S, A = setting.mdp.shape
    dim_b, dim_w = free_dimensions(ama, tied)
    N = u.shape[0]
    u = u.to(device=ama.boosts.device, dtype=torch.float64)
    if dim_b:
        low, high = (x.to(u).flatten() for x in setting.search_box())
        boosts = torch.zeros(N, S * A, dtype=u.dtype, device=u.device)
        first = 0
        for group in boost_groups(setting, tied):  # each coordinate spans the boxes of its boosts
            group = group.to(u.device)
            size = int(group.max()) + 1
            g_low = torch.full((size,), float("inf"), dtype=u.dtype, device=u.device).scatter_reduce(0, group, low, "amin")
            g_high = torch.full((size,), -float("inf"), dtype=u.dtype, device=u.device).scatter_reduce(0, group, high, "amax")
            z = (2.0 * u[:, first:first + size] - 1.0) * ((g_high - g_low) / 2 * float(box_scale))
            boosts += z[:, group]
            first += size
        boosts = (boosts + (high + low) / 2).reshape(N, S, A)
    else:
        boosts = ama.boosts.detach().expand(N, S, A).clone()
    if dim_w:
        w = 1.0 - u[:, dim_b:].clamp(0.0, _U_MAX)  # (0, 1]
        log_weights = (w / w.sum(-1, keepdim=True)).log()
    else:
        log_weights = ama.log_weights.detach().expand(N, n).clone()
    return log_weights.to(ama.boosts.dtype), boosts.to(ama.boosts.dtype)


def local_points(centre: torch.Tensor, num_points: int, half_width: float, seed: int) -> torch.Tensor:
    """``num_points`` points of ``[0, 1)^dim`` around ``centre [dim]``, ``[N, dim]``: a Sobol point
    of the cube of ``half_width`` about it on a random set of coordinates, whose size is
    log-uniform on ``1..dim`` (one coordinate to all), the others at the centre's values."""
    dim = centre.numel()
    v = sobol_unit(dim, num_points, seed)
    gen = torch.Generator().manual_seed(int(seed))
    size = ((dim + 1) ** torch.rand(num_points, 1, generator=gen, dtype=torch.float64)).floor()  # 1..dim
    rank = torch.rand(num_points, dim, generator=gen).argsort(-1).argsort(-1)
    moved = rank < size  # the `size` coordinates of a random permutation
    return (centre + (2.0 * v - 1.0) * half_width * moved).clamp(0.0, _U_MAX)


def sobol_candidates(ama: AMA, num_points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scrambled Sobol candidates over the setting's whole search box (:func:`candidates_from_unit`).

    Args:
        ama: Mechanism whose fixed parameters (those without ``requires_grad``) every candidate keeps.
        num_points: Number of candidates.
        seed: Scrambling seed.

    Returns:
        ``log_weights [N, n]`` and ``boosts [N, S, A]``.
    """
    return candidates_from_unit(ama, sobol_unit(sum(free_dimensions(ama)), num_points, seed))


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
    (:func:`~dmd_torch.cost.candidate_batches`: several candidates per solve when the profiles are
    few, else one candidate on chunks of the profiles; small batches stay in cache and run faster).
    The rewards depend on the profiles only and are computed once.

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
    P = types.shape[0]
    batch, chunk = candidate_batches(setting_elements(setting), P, max_batch_elements)
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
    """Grid search: the centre, global Sobol points, local rounds; exact scores on common profiles
    (paper, section 5); see :class:`GridConfig`."""

    name = "grid"
    Config = GridConfig

    def total_work(self) -> int:
        return self.config.num_points

    def check_setting(self, setting: Setting) -> None:
        """Also refuses a search space wider than Sobol's (``SobolEngine.MAXDIM`` coordinates)."""
        super().check_setting(setting)
        dim = (boost_dimensions(setting, self.config.tied) if setting.optimize_boosts else 0) + (
            setting.n_agents if setting.optimize_weights else 0)
        if dim > SobolEngine.MAXDIM:
            raise ValueError(f"grid search on {setting.name} (n_agents={setting.n_agents}, {setting.mdp.num_states:,} states x "
                             f"{setting.mdp.num_actions} actions) has {dim:,} coordinates; Sobol points allow at most "
                             f"{SobolEngine.MAXDIM:,}; allowed: a smaller setting, or a gradient method without grid starts")

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
        dim = sum(free_dimensions(ama, cfg.tied))
        sign = setting.objective.sign
        done = [0, -float("inf")]  # candidates scored, best score (sign * objective)

        def report(advance: int, scores: torch.Tensor | None = None) -> None:
            """``advance`` candidates done; ``scores``: the new scores on all profiles."""
            done[0] += advance
            if scores is not None:
                done[1] = max(done[1], float((sign * scores).max()))
            if callback is not None:
                callback(StepEvent("grid", done[0], 0, advance, ama, objective=sign * done[1]))

        def score_round(lw: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            """The round's scores on ``types``; with screening, the worst value for those dropped."""
            C, P, screen = lw.shape[0], types.shape[0], cfg.screen_profiles
            keep = cfg.kept(C)  # the top_k best are always scored on all
            if keep >= C:
                return score_candidates(setting, lw, b, types, cfg.max_batch_elements, lambda s: report(s.numel(), s))
            head = score_candidates(setting, lw, b, types[:screen], cfg.max_batch_elements, lambda s: report(s.numel()))
            kept = torch.argsort(sign * head, descending=True, stable=True)[:keep]
            rest = score_candidates(setting, lw[kept], b[kept], types[screen:], cfg.max_batch_elements)
            scores = torch.full_like(head, -sign * math.inf)
            scores[kept] = (head[kept] * screen + rest * (P - screen)) / P
            report(0, scores[kept])
            return scores

        units, all_scores = [], []
        for k, count in enumerate(cfg.rounds()):
            if k == 0:
                u = sobol_unit(dim, count, stream_seed(seed, "grid-sobol") % 2**31, cfg.scramble)
                if cfg.scramble:  # the unscrambled sequence starts at the centre itself
                    u = torch.cat([torch.full((1, dim), 0.5, dtype=torch.float64), u[: count - 1]])
            else:
                best = torch.cat(units)[torch.argmax(sign * torch.cat(all_scores))]
                u = local_points(best, count, 0.5 * cfg.shrink**k, stream_seed(seed, f"grid-local-{k}") % 2**31)
            lw, b = candidates_from_unit(ama, u, cfg.box_scale, cfg.tied)
            units.append(u)
            if k == 0 and cfg.screens:  # the centre on all profiles: never dropped
                all_scores.append(score_round(lw[:1], b[:1]))
                lw, b = lw[1:], b[1:]
            all_scores.append(score_round(lw, b))
        units_all, scores = torch.cat(units), torch.cat(all_scores)
        order = torch.argsort(sign * scores, descending=True, stable=True)[: cfg.top_k].tolist()
        lw, b = candidates_from_unit(ama, units_all[order], cfg.box_scale, cfg.tied)
        top = [(float(scores[k]), lw[i].clone(), b[i].clone()) for i, k in enumerate(order)]
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
