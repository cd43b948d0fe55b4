"""Typed configuration: one dataclass per concern, the single source of every default.

The Hydra apps (``scripts/train.py``, ``scripts/evaluate.py``) compose these dataclasses from Hydra's
ConfigStore (:func:`register_configs`), so Hydra checks every value's type and every key before
work starts; the Python API (:func:`dmd_torch.methods.make_method`) builds the same dataclasses, so
both get the same defaults. A dataclass checks value ranges in ``__post_init__`` (one-line
``ValueError``), and holds no run state: the methods keep theirs.

* :class:`OptimizerConfig`, :class:`SchedulerConfig`: a ``torch.optim`` optimizer and an optional
  ``lr_scheduler`` by class name.
* :class:`MultiStartConfig`: the starting points of the gradient methods (Algorithm 1).
* :class:`GridConfig`, :class:`RegLPConfig`, :class:`ZerothOrderConfig`: the outer methods (group ``method``).
* :class:`TrainConfig`, :class:`EvaluateConfig`: the two apps (the env group holds each setting's
  ``_target_`` and constructor arguments, :func:`setting_config`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException
from torch import nn

from dmd_torch.checks import check_bool, check_choice, check_float, check_int

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "INITS",
    "OptimizerConfig",
    "SchedulerConfig",
    "MultiStartConfig",
    "MethodConfig",
    "GridConfig",
    "GradientConfig",
    "RegLPConfig",
    "ZerothOrderConfig",
    "METHOD_CONFIGS",
    "VARIANTS",
    "method_config",
    "EvalConfig",
    "TrainConfig",
    "EvaluateConfig",
    "setting_config",
    "register_configs",
    "config_error",
    "to_config",
]

#: Optimizers by ``torch.optim`` class name; LBFGS (which needs a closure), SparseAdam (sparse
#: gradients) and Muon (matrices only; the log-weights are a vector) do not fit the gradient methods.
OPTIMIZERS: tuple[str, ...] = tuple(
    sorted(
        name
        for name, obj in vars(torch.optim).items()
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)
        and name not in ("Optimizer", "LBFGS", "SparseAdam", "Muon")
    )
)
#: Learning-rate schedules by ``torch.optim.lr_scheduler`` class name (those stepped once per step
#: without arguments; ReduceLROnPlateau and the composite schedules are not).
SCHEDULERS: tuple[str, ...] = tuple(
    sorted(
        name
        for name, obj in vars(torch.optim.lr_scheduler).items()
        if isinstance(obj, type) and issubclass(obj, torch.optim.lr_scheduler.LRScheduler)
        and name not in ("LRScheduler", "_LRScheduler", "ReduceLROnPlateau", "ChainedScheduler", "SequentialLR")
    )
)
#: Initial mechanisms of the gradient methods: ``uniform`` is the paper's ``w = 1, b ~ U[0, 1]``.
INITS: tuple[str, ...] = ("uniform", "vcg")
_LENGTH_ARGS = ("T_max", "total_iters", "total_steps")  # schedule lengths that default to the steps


@dataclass
class OptimizerConfig:
    """A ``torch.optim`` optimizer by class name.

    Attributes:
        name: One of :data:`OPTIMIZERS` (``SGD``, ``Adam``, ...).
        lr: Step size ``> 0``.
        kwargs: Further constructor arguments (e.g. ``momentum``, ``betas``).
    """

    name: str = "SGD"
    lr: float = 0.01
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("optimizer", self.name, OPTIMIZERS)
        self.lr = check_float("optimizer lr (step size)", self.lr)
        self.kwargs = dict(self.kwargs or {})
        self.build([nn.Parameter(torch.zeros(1))])  # bad arguments fail now, not after the first step

    def build(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The optimizer over ``params``."""
        try:
            return getattr(torch.optim, self.name)(params, lr=self.lr, **self.kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"bad arguments for optimizer {self.name} {self.kwargs}: {err}") from None


@dataclass
class SchedulerConfig:
    """An optional ``torch.optim.lr_scheduler`` schedule by class name, stepped once per gradient step.

    A schedule-length argument the class takes (``T_max``, ``total_iters``, ``total_steps``) and
    ``kwargs`` does not set defaults to the number of steps per start.

    Attributes:
        name: One of :data:`SCHEDULERS` (``CosineAnnealingLR``, ``StepLR``, ...), or ``None`` for a
            constant step size.
        kwargs: Constructor arguments (e.g. ``step_size``, ``gamma``, ``eta_min``).
    """

    name: Optional[str] = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kwargs = dict(self.kwargs or {})
        if self.name is not None:
            check_choice("lr scheduler", self.name, SCHEDULERS)
            self.build(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), steps=10)

    def build(self, optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The schedule attached to ``optimizer`` for a run of ``steps`` steps (``None``: constant)."""
        if self.name is None:
            return None
        cls = getattr(torch.optim.lr_scheduler, self.name)
        params = inspect.signature(cls).parameters
        kwargs = {k: max(1, steps) for k in _LENGTH_ARGS if k in params and k not in self.kwargs}
        kwargs.update(self.kwargs)
        try:
            return cls(optimizer, **kwargs)
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"bad arguments for lr scheduler {self.name} {self.kwargs}: {err}") from None


@dataclass
class MultiStartConfig:
    """Where the gradient methods start (the paper's Algorithm 1, lines 1-2).

    Attributes:
        starts: Number of starting points ``m >= 1``; the best by exact held-out score wins.
        grid_points: Sobol candidates to pick them from; ``0``: ``starts`` random initial mechanisms.
        grid_profiles: Common profiles scoring each grid candidate (paper: 2,000).
    """

    starts: int = 1
    grid_points: int = 0
    grid_profiles: int = 2_000

    def __post_init__(self) -> None:
        check_int("multistart starts", self.starts)
        check_int("multistart grid_points", self.grid_points, minimum=0)
        check_int("multistart grid_profiles", self.grid_profiles)
        if self.grid_points and self.starts > self.grid_points:
            raise ValueError(f"multistart starts must be <= grid_points = {self.grid_points}, got {self.starts}")

    def grid_config(self) -> "GridConfig | None":
        """The grid search that picks the starts (global points only, so they spread over the box), or ``None``."""
        if not self.grid_points:
            return None
        return GridConfig(num_points=self.grid_points, profiles=self.grid_profiles, top_k=self.starts, refine_rounds=0)


@dataclass
class MethodConfig:
    """What every method's configuration has.

    Attributes:
        name: The method (``grid``, ``zeroth_order``, ``reg_lp``).
        variant: The run's label (default: the name): it names a configuration of a method, e.g.
            ``reg_lp_paper``, and gives its runs their own sweep directory and report column.
    """

    name: str = MISSING
    variant: str = "${.name}"

    def __post_init__(self) -> None:
        if self.variant == "${.name}":  # the default, as built in Python (OmegaConf resolves it itself)
            self.variant = self.name
        label = self.variant
        ok = isinstance(label, str) and bool(label) and all(ch.isalnum() or ch in "_-." for ch in label)
        if not ok:
            raise ValueError(f"method variant must be a non-empty name of letters, digits, '_', '-' or '.', got {self.variant!r}")


@dataclass
class GridConfig(MethodConfig):
    """Grid search, each candidate scored exactly on common profiles (paper, section 5), refined locally.

    The candidates are the centre of the box first (zero boosts, equal weights: VCG, so the search
    never returns worse than VCG on its profiles), then Sobol points over the setting's box scaled
    by ``box_scale``, then ``refine_rounds`` rounds of Sobol points in a box around the best
    candidate so far, its half-width shrunk by ``shrink`` each round. Each round is screened on
    ``screen_profiles`` of the profiles; the best ``screen_keep`` share is scored on all, the rest is
    dropped. The paper variant (``grid_paper``) is the authors' sequence over the paper's box:
    unscrambled Sobol without its all-zero point (whose first point is the centre), no refinement,
    every candidate on all profiles.

    Attributes:
        num_points: Candidates in all (paper: 10,000).
        profiles: Common training profiles per candidate (paper: 2,000).
        top_k: How many best candidates the result lists (the best is the mechanism).
        max_batch_elements: Bound on ``candidates x profiles x problems x S x A`` per batched solve.
        scramble: Seeded scrambled Sobol points (``False``: the unscrambled sequence).
        tied: In an acyclic MDP, search boosts shared by the states as many steps from the end, one
            per (height, action) (``False``: one per state and action, the paper's).
        box_scale: Half-width of the global box relative to the setting's search box (``> 0``).
        refine_rounds: Local rounds after the global points (``0``: none).
        refine_fraction: Share of ``num_points`` the local rounds use together, in ``[0, 1)``.
        shrink: Half-width of each local box relative to the previous one, in ``(0, 1)``.
        screen_profiles: Screening: each round's candidates are scored on this many of the
            profiles first, and only the best ``screen_keep`` share of them (the centre always) on
            all; the others are dropped (``0``: every candidate on all profiles, the paper's).
        screen_keep: Share of a round's candidates scored on all profiles after screening, in ``(0, 1]``.
    """

    name: str = "grid"
    num_points: int = 10_000
    profiles: int = 2_000
    top_k: int = 1
    max_batch_elements: int = 500_000
    scramble: bool = True
    tied: bool = True
    box_scale: float = 1.0
    refine_rounds: int = 4
    refine_fraction: float = 0.5
    shrink: float = 0.5
    screen_profiles: int = 250
    screen_keep: float = 0.1

    @property
    def screens(self) -> bool:
        """Whether each round is screened: ``0 < screen_profiles < profiles``."""
        return 0 < self.screen_profiles < self.profiles

    def rounds(self) -> list[int]:
        """Candidates per round: the global round (the centre included), then each local round."""
        local = int(self.num_points * self.refine_fraction) if self.refine_rounds else 0
        per = [local // self.refine_rounds + (k < local % self.refine_rounds) for k in range(self.refine_rounds)] if local else []
        return [self.num_points - local, *per]

    def kept(self, candidates: int) -> int:
        """How many of a round's ``candidates`` are scored on all profiles: the best ``screen_keep``
        share and at least ``top_k`` where the search screens, else all of them."""
        if not self.screens:
            return candidates
        return min(candidates, max(math.ceil(self.screen_keep * candidates), self.top_k))

    def scorings(self) -> list[tuple[int, int]]:
        """The search's exact scorings as ``(candidates, profiles)`` pairs: per round, every candidate
        on the first ``screen_profiles`` profiles and the kept ones on the others (the centre on all,
        before the first round), or every candidate on all profiles."""
        out: list[tuple[int, int]] = []
        for k, count in enumerate(self.rounds()):
            if k == 0 and self.screens:
                out.append((1, self.profiles))
                count -= 1
            keep = self.kept(count)
            if keep >= count:
                out.append((count, self.profiles))
            else:
                out += [(count, self.screen_profiles), (keep, self.profiles - self.screen_profiles)]
        return [(c, p) for c, p in out if c > 0]

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("grid num_points", self.num_points)
        check_int("grid profiles", self.profiles)
        check_int("grid top_k", self.top_k)
        check_int("grid max_batch_elements", self.max_batch_elements)
        check_bool("grid scramble", self.scramble)
        check_bool("grid tied", self.tied)
        self.box_scale = check_float("grid box_scale", self.box_scale)
        check_int("grid refine_rounds", self.refine_rounds, minimum=0)
        self.refine_fraction = check_float("grid refine_fraction", self.refine_fraction, allow_zero=True)
        self.shrink = check_float("grid shrink", self.shrink)
        check_int("grid screen_profiles", self.screen_profiles, minimum=0)
        self.screen_keep = check_float("grid screen_keep", self.screen_keep)
        if self.screen_keep > 1.0:
            raise ValueError(f"grid screen_keep must be in (0, 1], got {self.screen_keep}")
        if self.refine_fraction >= 1.0:
            raise ValueError(f"grid refine_fraction must be in [0, 1), got {self.refine_fraction}")
        if self.shrink >= 1.0:
            raise ValueError(f"grid shrink must be in (0, 1), got {self.shrink}")
        if self.top_k > self.num_points:
            raise ValueError(f"grid top_k must be <= num_points = {self.num_points}, got {self.top_k}")
        if self.refine_rounds and int(self.num_points * self.refine_fraction) < self.refine_rounds:
            raise ValueError(f"grid num_points * refine_fraction = {int(self.num_points * self.refine_fraction)} "
                             f"must give each of the {self.refine_rounds} refine_rounds a point")


@dataclass
class GradientConfig(MethodConfig):
    """What the two gradient methods share (Algorithm 1).

    Attributes:
        steps: Gradient steps per start.
        profiles_per_step: Type profiles per stochastic gradient (paper: 20).
        eval_every: Exact held-out evaluation every this many steps (and at the start and end).
        init: Initial mechanism without a grid: ``uniform`` (``w = 1``, ``b ~ U[0, 1]``) or ``vcg``.
        optimizer: The optimizer.
        scheduler: The learning-rate schedule.
        multistart: The starting points.
        tied: Boosts that depend only on a state's height (decisions left) and the action, one per
            (height, action): each start and each gradient is projected onto them (an acyclic MDP
            only). ``None``: where the setting knows its optimum to lie there
            (:attr:`~dmd_torch.envs.Setting.boosts_by_height`, e.g. sequential sales); the paper
            variants: ``False``, one boost per state and action.
        keep_vcg: Score VCG (the free parameters at ``w = 1``, ``b = 0``) on the held-out sample
            too, and return it where no trained point beats it, so that the result's held-out score
            is never worse than VCG's (as grid search's candidates include the centre of its box).
            The paper variants: ``False``.
    """

    steps: int = 1000
    profiles_per_step: int = 20
    eval_every: int = 50
    init: str = "uniform"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    multistart: MultiStartConfig = field(default_factory=MultiStartConfig)
    tied: Optional[bool] = None
    keep_vcg: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("steps", self.steps, minimum=0)
        check_bool("keep_vcg", self.keep_vcg)
        if self.tied is not None:
            check_bool("tied", self.tied)
        check_int("profiles_per_step", self.profiles_per_step)
        check_int("eval_every", self.eval_every)
        check_choice("init", self.init, INITS)


@dataclass
class RegLPConfig(GradientConfig):
    """Gradients through the entropy-regularized follower (paper, section 4, "Regularized linear program").

    The defaults are the best this library knows: alpha annealed geometrically from 0.05 to 0.02
    over each start's steps, Adam with step 0.03 and cosine decay, 3 random starts, VCG kept as a
    candidate (``keep_vcg``), and boosts tied
    by height where the setting knows its optimum to lie in that family (``tied=null``: sequential
    sales). The smooth start escapes the flat regions where alpha = 0.01 stalls, the sharp end
    keeps the regularization bias small, and the tied boosts (one per (height, action) instead of
    one per history) reach 99% of Myerson's optimum on the largest sales cells, where untied ones
    fell short at the same steps (n = 6, m = 4: 0.988 and 0.983; docs/results/). The paper's
    section-5 values (alpha 0.01 throughout, step size 0.01 held constant, 20 profiles per step,
    one boost per state and action) are the variant ``reg_lp_paper`` (:data:`VARIANTS`).

    Attributes:
        alpha: Entropy weight of the follower's problem at each start's first step (paper: 0.01).
        alpha_final: Entropy weight of each start's last step, reached geometrically from ``alpha``;
            ``None``: ``alpha`` throughout (paper).
        backend: ``auto``, ``tree``, ``newton`` or ``cvxpylayers`` (:mod:`dmd_torch.regularized`).
        solver_options: The backend's options (e.g. ``{tol: 1e-10}`` for ``newton``).
    """

    name: str = "reg_lp"
    alpha: float = 0.05
    alpha_final: Optional[float] = 0.02
    backend: str = "auto"
    solver_options: dict[str, Any] = field(default_factory=dict)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig("Adam", 0.03))
    scheduler: SchedulerConfig = field(default_factory=lambda: SchedulerConfig("CosineAnnealingLR"))
    multistart: MultiStartConfig = field(default_factory=lambda: MultiStartConfig(starts=3))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.alpha = check_float("alpha", self.alpha)
        if self.alpha_final is not None:
            self.alpha_final = check_float("alpha_final", self.alpha_final)
        check_choice("backend", self.backend, ("auto", "tree", "newton", "cvxpylayers"))
        self.solver_options = dict(self.solver_options or {})


@dataclass
class ZerothOrderConfig(GradientConfig):
    """Zeroth-order bilevel gradients (paper, section 4, after Sow, Ji & Liang 2022).

    The defaults are the paper's section-5 values (20 Gaussian perturbations of std 0.05, 20
    profiles per step, SGD with step size 0.1, one boost per state and action) with VCG kept as a
    candidate (``keep_vcg``): from its random start the method ended below VCG on fresh profiles on
    some gridworlds (n = 5 on 8 x 8, where it now returns VCG, and on 3 x 3, where its result beats
    VCG on the 2,000 held-out profiles but not on fresh ones). Boosts tied by height (``tied=null`` on
    sales) were better in 5 of 6 sales cells and worse in one (asymmetric n = 4, m = 3: 0.873 of the
    optimum against 0.929, one seed; docs/results/), so ``tied`` stays ``false`` here; starting from
    VCG instead (``init=vcg``) was better than the random start with VCG kept in 8 of 16 runs (8
    cells, 2 seeds), worse in 3 (once by 0.19 of 1.65) and within a standard error in 5
    (docs/results/), no clear winner, so the paper's random start stays. The variant
    ``zeroth_order_paper`` is the paper's method as published (``keep_vcg=false``).

    Attributes:
        num_perturbations: Gaussian perturbations per gradient estimate (paper: 20).
        sigma: Their standard deviation (paper: 0.05).
        antithetic: Two-sided perturbations (not in the paper).
    """

    name: str = "zeroth_order"
    tied: Optional[bool] = False
    num_perturbations: int = 20
    sigma: float = 0.05
    antithetic: bool = False
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig("SGD", 0.1))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("num_perturbations", self.num_perturbations)
        self.sigma = check_float("sigma", self.sigma)
        check_bool("antithetic", self.antithetic)


#: The method configurations by name.
METHOD_CONFIGS: dict[str, type[MethodConfig]] = {"grid": GridConfig, "reg_lp": RegLPConfig, "zeroth_order": ZerothOrderConfig}

#: Named configurations of the methods: the paper's section-5 hyperparameters, by variant name, as
#: ``(method, values over its defaults)``. Each is also ``method=<variant>`` on the command line and
#: ``make_method("<variant>")`` in Python, and a run of one is reported under its name.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "grid_paper": ("grid", {"scramble": False, "tied": False, "box_scale": 1.0, "refine_rounds": 0, "screen_profiles": 0}),
    "zeroth_order_paper": ("zeroth_order", {"num_perturbations": 20, "sigma": 0.05, "profiles_per_step": 20,
                                            "optimizer": {"name": "SGD", "lr": 0.1}, "tied": False, "keep_vcg": False}),
    "reg_lp_paper": ("reg_lp", {"alpha": 0.01, "alpha_final": None, "profiles_per_step": 20,
                                "optimizer": {"name": "Adam", "lr": 0.01}, "scheduler": {"name": None},
                                "tied": False, "keep_vcg": False}),
}


def _variant_node(name: str) -> Any:
    """The structured config of variant ``name``: its method's schema with the variant's values."""
    method, values = VARIANTS[name]
    return OmegaConf.merge(OmegaConf.structured(METHOD_CONFIGS[method]), {**values, "variant": name})


def method_config(name: str, overrides: Any = None) -> MethodConfig:
    """The configuration of method or variant ``name`` (:data:`METHOD_CONFIGS`, :data:`VARIANTS`)
    with ``overrides`` over it, checked (one-line errors naming what is allowed)."""
    if name in VARIANTS:
        return to_config(METHOD_CONFIGS[VARIANTS[name][0]], OmegaConf.merge(_variant_node(name), overrides or {}))
    if name not in METHOD_CONFIGS:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join([*METHOD_CONFIGS, *VARIANTS])}")
    return to_config(METHOD_CONFIGS[name], overrides)


@dataclass
class EvalConfig:
    """The final evaluation of a training run (paper, section 5).

    Attributes:
        profiles: Fresh type profiles, exact inner solve (``>= 2``).
        seed: Their seed (VCG and the known optimum are evaluated on the same profiles).
    """

    profiles: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("eval.profiles", self.profiles, minimum=2)
        check_int("eval.seed", self.seed, minimum=0)


@dataclass
class TrainConfig:
    """A training run (``scripts/train.py``).

    Attributes:
        env: The setting: ``_target_`` (a :class:`~dmd_torch.envs.Setting` subclass) and its arguments.
        method: The outer method.
        seed: Seeds training profiles, perturbations, Sobol scrambling and initial boosts.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        threads: Torch CPU threads (the tensors are small: 1 is fastest); ``None``: torch's default.
        tune_allocator: Keep freed memory in the process between batches (:mod:`dmd_torch.runtime`).
        heldout_profiles: The fixed held-out sample, evaluated exactly every ``method.eval_every`` steps.
        eval: The final evaluation.
        tensorboard: Write TensorBoard event files into the run directory.
        log_every: Training steps per TensorBoard point (the means of those steps) and bar refresh.
        progress: Show a progress bar.
        output_dir: The run directory (``None``: Hydra's).
        force: Rerun even if the run directory holds a finished run of this configuration.
    """

    env: Any = MISSING
    method: MethodConfig = MISSING
    seed: int = 0
    device: str = "cpu"
    threads: Optional[int] = 1
    tune_allocator: bool = True
    heldout_profiles: int = 2_000
    eval: EvalConfig = field(default_factory=EvalConfig)
    tensorboard: bool = True
    log_every: int = 10
    progress: bool = True
    output_dir: Optional[str] = None
    force: bool = False

    def __post_init__(self) -> None:
        check_int("seed", self.seed, minimum=0)
        if self.threads is not None:
            check_int("threads", self.threads)
        check_int("heldout_profiles", self.heldout_profiles)
        check_int("log_every", self.log_every)


@dataclass
class EvaluateConfig:
    """Evaluation of a saved mechanism (``scripts/evaluate.py``).

    Attributes:
        mechanism: ``mechanism.json``, ``mechanism.pt``, or a run directory holding one.
        profiles: Fresh type profiles (paper protocol, ``>= 2``).
        seed: Seed of the profile sampler.
        audit_profiles: Profiles for the IC/IR audit (each agent tries ~12 misreports per profile).
        out: Where to write the JSON (``None``: ``evaluation.json`` beside the mechanism).
        tune_allocator: As in :class:`TrainConfig`.
    """

    mechanism: str = MISSING
    profiles: int = 10_000
    seed: int = 0
    audit_profiles: int = 200
    out: Optional[str] = None
    tune_allocator: bool = True

    def __post_init__(self) -> None:
        check_int("profiles", self.profiles, minimum=2)
        check_int("seed", self.seed, minimum=0)
        check_int("audit_profiles", self.audit_profiles, minimum=2)


def setting_config(cls: type) -> type:
    """A dataclass of ``cls``'s constructor arguments, typed and defaulted from its signature, with
    its ``_target_``: the env group's node for a registered setting (so Hydra checks their types)."""
    hints = typing.get_type_hints(cls.__init__)
    fields: list[tuple[str, Any, Any]] = [("_target_", str, field(default=f"{cls.__module__}.{cls.__qualname__}"))]
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        default = MISSING if p.default is inspect.Parameter.empty else p.default
        fields.append((p.name, hints.get(p.name, Any), field(default=default)))
    return dataclasses.make_dataclass(f"{cls.__name__}Config", fields)


def register_configs() -> None:
    """Stores the schemas in Hydra's ConfigStore: ``train_config`` and ``evaluate_config`` (the apps), group
    ``method`` (``grid``, ``reg_lp``, ``zeroth_order`` and the :data:`VARIANTS`) and group ``env``
    (each registered setting)."""
    from dmd_torch.envs import ENVS  # the settings build on this module's layer

    cs = ConfigStore.instance()
    cs.store(name="train_config", node=TrainConfig)
    cs.store(name="evaluate_config", node=EvaluateConfig)
    for name, cls in METHOD_CONFIGS.items():
        cs.store(group="method", name=name, node=cls)
    for name in VARIANTS:
        cs.store(group="method", name=name, node=_variant_node(name))
    for name, setting in ENVS.items():
        cs.store(group="env", name=name, node=setting_config(setting))


def config_error(err: OmegaConfBaseException) -> ValueError:
    """An OmegaConf validation error as a one-line ``ValueError`` naming the key (and, for an unknown
    key, the keys allowed there)."""
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    key = getattr(err, "full_key", None)
    if isinstance(err, MissingMandatoryValue):
        return ValueError(f"{key} is missing: give it, e.g. on the command line as {key}=...")
    owner = getattr(err, "object_type", None)
    if isinstance(err, ConfigKeyError) and isinstance(owner, type) and dataclasses.is_dataclass(owner):
        allowed = ", ".join(f.name for f in dataclasses.fields(owner))
        return ValueError(f"unknown key {key!r} for {owner.__name__}; allowed: {allowed}")
    return ValueError(f"{first} (key {key})" if key else first)


def to_config(cls: type, overrides: Any = None) -> Any:
    """An instance of the dataclass ``cls`` with ``overrides`` (a mapping or config) merged over its
    defaults, type-checked by OmegaConf and range-checked by its ``__post_init__`` (one-line errors)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), overrides or {})
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise config_error(err) from None
