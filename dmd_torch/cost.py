"""What a run will cost, estimated from the sizes before any work (memory and time).

The work of every solve is proportional to its *elements*: profiles x problems x states x
actions, where a profile has ``n + 1`` problems when the objective needs the problems without each
agent (revenue) and one otherwise; every batched solve costs a fixed time besides. The model:

* time of one exact evaluation of ``P`` profiles: ``eval_solve_s * solves + eval_s * P * E``, with
  ``solves`` the batches of :func:`~dmd_torch.evaluation.profile_chunk` profiles;
* time of one training step: ``step_overhead_s + step_s * profiles_per_step * E + step_cubic_s *
  profiles_per_step * problems * N^3`` per method (the zeroth-order step includes its perturbed
  exact solves; ``N`` is the order of the dense system a Newton iteration of the regularized LP
  factors, :func:`~dmd_torch.regularized.newton_system_size`, 0 on history trees);
* time of a grid search: per scoring of ``C`` candidates on ``P`` profiles
  (:meth:`~dmd_torch.config.GridConfig.scorings`: screened rounds score every candidate on a few
  profiles, the best on the rest), ``grid_solve_s * solves + grid_s * C * P * E``, with ``solves``
  the batched solves of :func:`candidate_batches`;
* peak memory: the MDP (``16 S A K`` bytes) plus ``bytes_per_element`` times the elements held at
  once (one evaluation batch, or one training step's profiles, which a step solves in one batch
  however many elements they hold), plus what grid search holds whole: its training profiles'
  rewards and its candidates' coordinates,

where ``E = problems * S * A``. ``scripts/bench_scaling.py`` measures the constants per setting
(time and peak memory as the sizes grow; times by nonnegative least squares on relative errors) and writes them to
the package data ``dmd_torch/data/cost_model.json``; a setting it has not measured (a user's) takes
the largest constant of those measured, and an estimate says so, as it does for a size past the
largest the benchmark measured (:func:`caveat`).

:func:`check_fits` refuses a setting whose smallest run would not fit in the memory available,
before its MDP is built (:meth:`~dmd_torch.envs.Setting.shape_of`); :func:`estimate` gives a
whole run's :class:`CostEstimate`, which ``scripts/train.py`` prints and checks at the start.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

from dmd_torch.config import GridConfig
from dmd_torch.evaluation import profile_chunk
from dmd_torch.regularized import newton_system_size
from dmd_torch.runtime import MAX_BATCH_ELEMENTS

if TYPE_CHECKING:
    from dmd_torch.config import MethodConfig
    from dmd_torch.envs.base import Setting
    from dmd_torch.methods.base import Method

__all__ = [
    "CostModel",
    "candidate_batches",
    "candidate_solves",
    "exact_seconds",
    "grid_seconds",
    "CostEstimate",
    "caveat",
    "cost_model",
    "available_memory",
    "elements",
    "setting_elements",
    "problems",
    "check_fits",
    "estimate",
    "step_seconds",
    "format_duration",
    "MODEL_FILE",
]

MODEL_FILE = "cost_model.json"
_GIB = 2**30


@dataclass(frozen=True)
class CostModel:
    """The measured constants of one setting (see the module docstring).

    Attributes:
        eval_s: Seconds per element of exact evaluation.
        eval_solve_s: Seconds per batched solve of exact evaluation, whatever its size.
        step_s: Seconds per element of a training step, by method (``reg_lp``, ``zeroth_order``).
        step_overhead_s: Seconds per training step, by method.
        step_cubic_s: Seconds per problem and cubed Newton system order of a training step, by
            method (absent: 0).
        grid_s: Seconds per element of scoring grid candidates.
        grid_solve_s: Seconds per batched solve of grid candidates, whatever its size.
        bytes_per_element: Peak bytes per element held at once.
        max_states: The most states of a size the benchmark measured (``None``: not recorded).
        max_elements: The most elements per profile of a size it measured.
        measured: Whether the benchmark measured this setting (else: the largest constants of those
            it did).
    """

    eval_s: float
    eval_solve_s: float
    step_s: dict[str, float]
    step_overhead_s: dict[str, float]
    grid_s: float
    grid_solve_s: float
    bytes_per_element: float
    step_cubic_s: dict[str, float] = field(default_factory=dict)
    max_states: int | None = None
    max_elements: int | None = None
    measured: bool = True


@lru_cache(maxsize=1)
def _models() -> dict[str, CostModel]:
    text = resources.files("dmd_torch").joinpath("data", MODEL_FILE).read_text(encoding="utf-8")
    raw = json.loads(text)["settings"]
    return {k: CostModel(v["eval_s"], v["eval_solve_s"], dict(v["step_s"]), dict(v["step_overhead_s"]), v["grid_s"],
                         v["grid_solve_s"], v["bytes_per_element"], dict(v.get("step_cubic_s", {})),
                         v.get("max_states"), v.get("max_elements"))
            for k, v in raw.items()}


def cost_model(setting_name: str) -> CostModel:
    """The constants measured for ``setting_name``, or the largest of each over the measured
    settings for one the benchmark has not measured."""
    models = _models()
    if setting_name in models:
        return models[setting_name]
    ms = list(models.values())
    methods = {k for m in ms for k in m.step_s}
    return CostModel(max(m.eval_s for m in ms), max(m.eval_solve_s for m in ms),
                     {k: max(m.step_s.get(k, 0.0) for m in ms) for k in methods},
                     {k: max(m.step_overhead_s.get(k, 0.0) for m in ms) for k in methods},
                     max(m.grid_s for m in ms), max(m.grid_solve_s for m in ms), max(m.bytes_per_element for m in ms),
                     {k: max(m.step_cubic_s.get(k, 0.0) for m in ms) for k in methods}, measured=False)


def available_memory() -> int:
    """Bytes of physical memory available now (``/proc/meminfo``'s MemAvailable, else the total)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def problems(n_agents: int, needs_without: bool = True) -> int:
    """Follower problems of one profile: ``n + 1`` with ``needs_without``, else 1."""
    return n_agents + 1 if needs_without else 1


def elements(n_agents: int, states: int, actions: int, needs_without: bool = True) -> int:
    """Elements of one profile: ``problems * S * A`` (:func:`problems`)."""
    return problems(n_agents, needs_without) * states * actions


def setting_elements(setting: Setting) -> int:
    """Elements of one profile of ``setting`` (:func:`elements` of its sizes and objective)."""
    S, A = setting.mdp.shape
    return elements(setting.n_agents, S, A, setting.objective.needs_without)


def candidate_batches(per_profile: int, profiles: int, max_batch_elements: int) -> tuple[int, int]:
    """How grid search batches its exact solves (:func:`~dmd_torch.methods.grid.score_candidates`):
    ``(candidates, profiles)`` per solve, ``candidates x profiles x per_profile <= max_batch_elements``
    where one profile fits: several candidates on all ``profiles`` when they fit, else one candidate
    on chunks of them."""
    chunk = max(1, min(profiles, max_batch_elements // per_profile))
    batch = max(1, max_batch_elements // (per_profile * profiles)) if chunk == profiles else 1
    return batch, chunk


def candidate_solves(per_profile: int, candidates: int, profiles: int, max_batch_elements: int) -> int:
    """Batched solves of scoring ``candidates`` on ``profiles`` (:func:`candidate_batches`)."""
    batch, chunk = candidate_batches(per_profile, profiles, max_batch_elements)
    return math.ceil(candidates / batch) * math.ceil(profiles / chunk)


def exact_seconds(model: CostModel, setting: Setting, profiles: int) -> float:
    """One exact evaluation of ``profiles`` profiles: its batched solves
    (:func:`~dmd_torch.evaluation.profile_chunk`) and its elements."""
    E = setting_elements(setting)
    return model.eval_solve_s * math.ceil(profiles / profile_chunk(setting)) + model.eval_s * profiles * E


def grid_seconds(model: CostModel, setting: Setting, cfg: GridConfig) -> float:
    """A grid search: the batched solves and the elements of each of its scorings
    (:meth:`~dmd_torch.config.GridConfig.scorings`)."""
    E = setting_elements(setting)
    return sum(model.grid_solve_s * candidate_solves(E, C, P, cfg.max_batch_elements) + model.grid_s * C * P * E
               for C, P in cfg.scorings())


@dataclass(frozen=True)
class CostEstimate:
    """The estimated cost of a run.

    Attributes:
        evaluation_s: One exact evaluation of the final number of profiles (the mechanism only).
        step_s: One training step (``None`` for grid search).
        total_s: The whole run: training, held-out evaluations, the final evaluation of the
            mechanism, VCG and the known optimum.
        peak_bytes: Peak memory.
        caveat: Why the estimate may be far off, or ``None``: the setting was not benchmarked, or
            the size lies past the largest it measured (:func:`caveat`).
    """

    evaluation_s: float
    step_s: float | None
    total_s: float
    peak_bytes: float
    caveat: str | None = None

    def describe(self) -> str:
        """One line: the expected duration and peak memory, and the caveat if any."""
        step = "" if self.step_s is None else f", {format_duration(self.step_s)} per training step"
        note = "" if self.caveat is None else f"; {self.caveat}"
        return (f"expected duration {format_duration(self.total_s)} (exact evaluation {format_duration(self.evaluation_s)}{step}), "
                f"peak memory {self.peak_bytes / _GIB:.2f} GiB{note}")


def caveat(model: CostModel, setting: Setting) -> str | None:
    """Why an estimate for ``setting`` may be far off: its constants were not measured, or its
    states or elements per profile exceed the largest size the benchmark measured (the model's
    terms are then extrapolated: on MDPs with cycles the regularized LP's step grows with S^3,
    beyond the fitted range's linear term). ``None`` within the measured range."""
    if not model.measured:
        return (f"setting {setting.name!r} was not benchmarked: estimated with the largest constants "
                "of those that were (scripts/bench_scaling.py)")
    S, E = setting.mdp.num_states, setting_elements(setting)
    if model.max_states is None or model.max_elements is None:
        return None
    if S > model.max_states or E > model.max_elements:
        return (f"extrapolated past the largest size benchmarked ({model.max_states:,} states, "
                f"{model.max_elements:,} elements per profile; here {S:,} and {E:,}): may be far off")
    return None


def format_duration(seconds: float) -> str:
    """A duration for people: ``4.2 ms``, ``0.42 s``, ``17.3 s``, ``2.5 min``, ``1.20 h``."""
    if seconds < 0.1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _peak(model: CostModel, n: int, S: int, A: int, K: int, rows: int, reward_rows: int, needs_without: bool,
          step_rows: int = 0) -> float:
    """The MDP (``16 S A K`` bytes) and the larger of: ``bytes_per_element`` times one batch of
    ``rows`` profiles (at least one, at most an evaluation batch) with the rewards of
    ``reward_rows`` profiles held whole, and ``bytes_per_element`` times a training step's
    ``step_rows`` profiles, which a step solves in one batch however many elements they hold."""
    per_profile = elements(n, S, A, needs_without)
    batch = max(per_profile, min(MAX_BATCH_ELEMENTS, per_profile * rows))
    held = max(model.bytes_per_element * batch + 8.0 * reward_rows * n * S * A,
               model.bytes_per_element * step_rows * per_profile)
    return 16.0 * S * A * K + held


def check_fits(name: str, n_agents: int, size: int, states: int, actions: int, successors: int = 1,
               needs_without: bool = True, memory: int | None = None) -> None:
    """Raises a one-line ``ValueError`` when the MDP of setting ``name`` (``states`` x ``actions`` x
    ``successors``) and one profile's solve would not fit in ``memory`` bytes (default: available)."""
    memory = available_memory() if memory is None else memory
    peak = _peak(cost_model(name), n_agents, states, actions, successors, 1, 0, needs_without)
    if peak > memory:
        raise ValueError(
            f"{name} with n_agents={n_agents}, size={size} has {states:,} states x {actions:,} actions: "
            f"estimated memory {peak / _GIB:.1f} GiB for one profile exceeds the {memory / _GIB:.1f} GiB "
            "available; allowed: smaller sizes (docs/benchmarks.md, scaling)")


def step_seconds(model: CostModel, setting: Setting, cfg: MethodConfig) -> float:
    """One training step of the gradient method ``cfg`` (``reg_lp`` or ``zeroth_order``) on
    ``setting``: overhead, the linear term in the elements and, for ``reg_lp``, the cubic one in
    the Newton system's order (module docstring)."""
    step = model.step_overhead_s[cfg.name] + model.step_s[cfg.name] * cfg.profiles_per_step * setting_elements(setting)
    cubic = model.step_cubic_s.get(cfg.name, 0.0)
    if cubic and cfg.name == "reg_lp":
        N = newton_system_size(setting.mdp, cfg.backend)
        step += cubic * cfg.profiles_per_step * problems(setting.n_agents, setting.objective.needs_without) * N**3
    return step


def estimate(setting: Setting, method: Method | MethodConfig, heldout_profiles: int = 2_000,
             eval_profiles: int = 10_000) -> CostEstimate:
    """The :class:`CostEstimate` of training ``setting`` with ``method`` (a
    :class:`~dmd_torch.methods.Method` or its config) and evaluating it, from the sizes.

    Args:
        setting: The :class:`~dmd_torch.envs.Setting`.
        method: The method or its configuration (``grid``, ``zeroth_order`` or ``reg_lp``).
        heldout_profiles: The held-out sample of the gradient methods.
        eval_profiles: The final evaluation's profiles.
    """
    cfg = getattr(method, "config", method)
    model = cost_model(setting.name)
    S, A = setting.mdp.shape
    n = setting.n_agents
    evaluation = exact_seconds(model, setting, eval_profiles)
    held_eval = exact_seconds(model, setting, heldout_profiles)
    known = 3 if setting.known_optimum() is not None else 2
    K = setting.mdp.next_states.shape[-1]
    step_rows = 0
    if cfg.name == "grid":
        step = None
        train = grid_seconds(model, setting, cfg) + held_eval  # the best candidate on the held-out sample
        held = rewards = cfg.profiles  # grid search holds its training profiles' rewards whole
        candidates = 8.0 * cfg.num_points * (2 * S * A + n)  # and every candidate's coordinates
    else:
        starts = cfg.multistart.starts
        step = step_seconds(model, setting, cfg)
        evals = starts * (math.ceil(cfg.steps / cfg.eval_every) + 1) + cfg.keep_vcg  # VCG's score too
        train = starts * cfg.steps * step + evals * held_eval
        grid_cfg = cfg.multistart.grid_config()
        train += 0.0 if grid_cfg is None else grid_seconds(model, setting, grid_cfg) + held_eval
        held = max(cfg.profiles_per_step, heldout_profiles)
        step_rows = cfg.profiles_per_step
        rewards = cfg.multistart.grid_profiles if cfg.multistart.grid_points else 0
        candidates = 8.0 * cfg.multistart.grid_points * (S * A + n)
    peak = _peak(model, n, S, A, K, held, rewards, setting.objective.needs_without, step_rows) + candidates
    return CostEstimate(evaluation, step, train + known * evaluation, peak, caveat(model, setting))
