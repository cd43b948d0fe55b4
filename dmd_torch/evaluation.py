"""Evaluation with the paper's protocol, baselines and the incentive audit.

* :func:`evaluate`: fresh type profiles (10,000 by default), exact (unregularized) outcomes, mean and
  standard error of the leader's objective (paper, section 5), the VCG baseline on the *same*
  profiles, and, where the setting knows an optimal mechanism (:meth:`Setting.known_optimum`;
  sequential sales: Myerson's auction), its objective on the same profiles and the optimality ratio.
* :func:`ic_audit`: tries misreports for every agent (draws from the prior, zero, the top of the
  support, the other agents' reports) and reports the largest utility gain from lying and the
  smallest truthful utility. An AMA with the payments of Definition 3.1 is strategyproof, so the
  gain is zero up to round-off for any weights and boosts.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch

from dmd_torch.checks import check_int
from dmd_torch.soundness import SOUND
from dmd_torch.envs import Setting
from dmd_torch.mechanism import AMA
from dmd_torch.runtime import MAX_BATCH_ELEMENTS, exact_threads

__all__ = [
    "EvaluationResult",
    "AuditResult",
    "objective_values",
    "profile_chunk",
    "mean_stderr",
    "evaluate",
    "ic_audit",
]

#: What evaluation says of a mechanism that is not numerically sound (followed by its tolerance).
NOT_SOUND = "the mechanism's boosts or weights are so large that float64 keeps it strategyproof only up to"

# MAX_BATCH_ELEMENTS (dmd_torch.runtime) bounds the elements of one batched exact solve's working
# arrays (profile_chunk): batches of a few MB stay in cache and reuse their memory, up to 2x faster.


@dataclass
class EvaluationResult:
    """Result of :func:`evaluate` (``revenue`` is better higher, a loss lower).

    Attributes:
        objective: ``"revenue"`` or the loss name (``"makespan"``).
        mean: Mean objective of the mechanism.
        stderr: Its standard error (sample std / sqrt(profiles)).
        vcg_mean: Mean objective of VCG on the same profiles.
        vcg_stderr: Its standard error.
        profiles: Number of profiles.
        seed: Seed of the profile sampler.
        improvement_pct: ``100 * (mean - vcg) / |vcg|`` (sign flipped for a loss, so that positive is
            better); ``None`` when VCG is zero.
        known_optimum: Mean objective of the known optimal mechanism on the same profiles, or ``None``.
        known_optimum_stderr: Its standard error, or ``None``.
        optimality_ratio: ``mean / known_optimum``, or ``None``.
        ic_tolerance: How far float64 rounding can bend the incentives, relative to the rewards
            (:mod:`dmd_torch.soundness`).
        numerically_sound: Whether that is within :data:`dmd_torch.soundness.SOUND`; where it is
            not, the mechanism is strategyproof only up to ``ic_tolerance``.
    """

    objective: str
    mean: float
    stderr: float
    vcg_mean: float
    vcg_stderr: float
    profiles: int
    seed: int
    improvement_pct: float | None
    known_optimum: float | None = None
    known_optimum_stderr: float | None = None
    optimality_ratio: float | None = None
    ic_tolerance: float = 0.0
    numerically_sound: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AuditResult:
    """Result of :func:`ic_audit`.

    Attributes:
        max_ic_gain: Largest utility gain of any agent from any tried misreport (<= ~1e-12 for an AMA).
        min_truthful_utility: Smallest utility of truthful reporting (>= 0 where rewards are >= 0).
        misreports: Number of (profile, agent, misreport) triples tried.
    """

    max_ic_gain: float
    min_truthful_utility: float
    misreports: int


def profile_chunk(setting: Setting) -> int:
    """Profiles per batched exact solve, at least one.

    Acyclic MDPs: ``MAX_BATCH_ELEMENTS / ((n + 1) S A)``; backward induction works on the ``n + 1``
    problems' state-action values level by level, and more profiles fall out of cache (measured
    slower on sales and scheduling). MDPs with cycles: ``MAX_BATCH_ELEMENTS / ((n + 1) S)``; the
    rounds of policy iteration work on state values, where more profiles per call amortize the
    per-call overhead (gridworld 5 x 4: 1.1x faster than with the acyclic rule).
    """
    S, A = setting.mdp.shape
    per_profile = (setting.n_agents + 1) * S * (A if setting.mdp.levels is not None else 1)
    return max(1, MAX_BATCH_ELEMENTS // per_profile)


def objective_values(ama: AMA, types: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Exact objective (revenue or loss) of each profile ``[B]``, solved in chunks of profiles
    (default :func:`profile_chunk`)."""
    chunk = profile_chunk(ama.setting) if chunk is None else check_int("chunk", chunk)
    with exact_threads(ama.setting):
        return torch.cat([ama.objective(t) for t in types.split(chunk)])


def mean_stderr(x: torch.Tensor) -> tuple[float, float]:
    """Sample mean and standard error of the mean."""
    n = x.numel()
    return float(x.mean()), float(x.std() / math.sqrt(n)) if n > 1 else 0.0


def evaluate(ama: AMA, profiles: int = 10_000, seed: int = 0, chunk: int | None = None) -> EvaluationResult:
    """Evaluates a mechanism with the paper's protocol on ``profiles`` fresh profiles.

    The VCG baseline and the known optimum (where there is one) are evaluated on the same profiles.

    Args:
        ama: The mechanism.
        profiles: Number of type profiles (``>= 2``).
        seed: Seed of the profile sampler.
        chunk: Profiles per batched solve (default :func:`profile_chunk`).
    """
    check_int("profiles", profiles, minimum=2)  # two for a standard error
    with exact_threads(ama.setting):
        return _evaluate(ama, profiles, seed, chunk)


def _evaluate(ama: AMA, profiles: int, seed: int, chunk: int | None) -> EvaluationResult:
    ama.check_parameters()
    tolerance = ama.ic_tolerance()
    setting = ama.setting
    gen = torch.Generator().manual_seed(int(seed))
    types = setting.checked_sample(profiles, gen).to(ama.boosts.device)
    mean, se = mean_stderr(objective_values(ama, types, chunk))
    vcg = AMA.vcg(setting).to(ama.boosts.device)
    vmean, vse = mean_stderr(objective_values(vcg, types, chunk))
    sign = setting.objective.sign
    improvement = None if abs(vmean) < 1e-12 else 100.0 * sign * (mean - vmean) / abs(vmean)
    result = EvaluationResult(setting.objective.name, mean, se, vmean, vse, profiles, int(seed), improvement,
                              ic_tolerance=tolerance, numerically_sound=tolerance <= SOUND)
    if not result.numerically_sound:
        warnings.warn(f"{NOT_SOUND} {tolerance:.1e} of the rewards (docs/numerical_soundness.md)", stacklevel=3)
    best = AMA.known_optimum(setting)
    if best is not None:
        kmean, kse = mean_stderr(objective_values(best.to(ama.boosts.device), types, chunk))
        result.known_optimum, result.known_optimum_stderr = kmean, kse
        result.optimality_ratio = mean / kmean if abs(kmean) > 1e-12 else None
    return result


def _misreports(setting: Setting, types: torch.Tensor, i: int, prior_draws: int, gen: torch.Generator) -> torch.Tensor:
    """Candidate reports ``[B, M, K]`` for agent ``i``: prior draws, zero, support ends, others' reports."""
    B = types.shape[0]
    low, high = setting.type_bounds()
    cands = [
        setting.checked_sample(B * prior_draws, gen)[:, i].reshape(B, prior_draws, setting.type_dim).to(types),
    ] if prior_draws else []
    cands += [
        torch.zeros_like(types[:, i]).unsqueeze(1),
        low[i].to(types).expand(B, 1, -1),
        high[i].to(types).expand(B, 1, -1),
    ]
    others = [j for j in range(setting.n_agents) if j != i]
    if others:
        cands.append(types[:, others])
    return torch.cat(cands, dim=1)


def ic_audit(ama: AMA, types: torch.Tensor, prior_draws: int = 8, seed: int = 0) -> AuditResult:
    """Largest gain from misreporting, and smallest truthful utility, over the given profiles.

    For each agent ``i`` and candidate report ``x`` (see :func:`_misreports`), the profile with
    ``types[:, i] = x`` is solved exactly and ``i``'s true utility ``<r_i, nu'> - p_i'`` is compared
    with its truthful utility. Agents are looped over in Python; profiles and reports are batched.

    Args:
        ama: The mechanism.
        types: True type profiles ``[B, n, K]``.
        prior_draws: Misreports per agent drawn from the prior.
        seed: Seed of those draws.
    """
    setting = ama.setting
    setting.check_types(types)
    check_int("ic_audit prior_draws", prior_draws, minimum=0)
    if types.shape[0] == 0:
        raise ValueError("ic_audit needs at least one type profile, got 0")
    with exact_threads(setting):
        return _ic_audit(ama, types, prior_draws, seed)


def _ic_audit(ama: AMA, types: torch.Tensor, prior_draws: int, seed: int) -> AuditResult:
    setting = ama.setting
    gen = torch.Generator().manual_seed(int(seed))
    truth = ama.outcome(types)
    r_true = setting.checked_rewards(types)
    B, n = types.shape[:2]
    max_gain, tried = -math.inf, 0
    for i in range(n):
        cand = _misreports(setting, types, i, prior_draws, gen)  # [B, M, K]
        M = cand.shape[1]
        lied = types.unsqueeze(1).repeat(1, M, 1, 1)
        lied[:, :, i] = cand
        out = ama.outcome(lied.flatten(0, 1))
        nu = out.occupancy.reshape(B, M, *setting.mdp.shape)
        true_value = (r_true[:, i].unsqueeze(1) * nu).sum((-2, -1))
        utility = true_value - out.payments[:, i].reshape(B, M)
        gain = utility - truth.utilities[:, i].unsqueeze(1)
        max_gain = max(max_gain, float(gain.max()))
        tried += B * M
    return AuditResult(max_gain, float(truth.utilities.min()), tried)
