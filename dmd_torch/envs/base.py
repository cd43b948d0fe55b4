"""What a mechanism-design setting provides, and what it knows about itself.

A *type profile* is a tensor ``types[B, n, K]``: one row of ``K`` numbers per agent (a value in the
sales settings, a cost per task in scheduling, a value per cell in the gridworld). A setting turns
reported types into rewards ``r[B, n, S, A]`` on its MDP; the mechanism (:mod:`dmd_torch.mechanism`)
does the rest. A user's setting subclasses :class:`Setting`: it calls ``super().__init__`` with the
common arguments, builds ``self.mdp`` and implements :meth:`Setting.type_bounds`,
:meth:`Setting.sample_types` and :meth:`Setting.rewards` (and, for an objective other than revenue,
sets ``objective = Loss(name)`` and implements :meth:`Setting.loss_vector`). Everything the library
needs to know about a setting is a method or attribute here, so a subclass changes it by overriding:
its objective and direction, its type priors (:attr:`Setting.distributions`), its options (the
constructor's arguments, :meth:`Setting.config`), the parameters the leader optimizes, the grid
search's box (:meth:`Setting.search_box`), the known optimal mechanism (:meth:`Setting.known_optimum`)
the key its results are reported under (:attr:`Setting.report_key`) and how a mechanism is
described in its terms (:meth:`Setting.describe`).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from dmd_torch.checks import all_finite, check_int
from dmd_torch.exact import PolicyOccupancy
from dmd_torch.mdp import TabularMDP
from dmd_torch.objective import REVENUE, LeaderObjective

if TYPE_CHECKING:
    from dmd_torch.cost import CostEstimate
    from dmd_torch.description import Description

__all__ = ["Setting", "history_tree_mdp", "history_tree_states", "uniform"]


class Setting(ABC):
    """Base class of a dynamic mechanism-design setting.

    Args:
        n_agents: Number of agents ``n >= 1``.
        size: The setting's size parameter (items, tasks, grid side), ``>= min_size``.
        distribution: Name of the type prior, one of :attr:`distributions` (``None``: the first).

    Attributes:
        name: Short name (``seq_sales``, ``scheduling``, ``gridworld`` or a user's own).
        distributions: The type priors the setting offers; the first is the default.
        min_size: The smallest allowed ``size``.
        objective: The leader's objective (:class:`~dmd_torch.objective.LeaderObjective`): revenue by
            default, or a ``Loss`` given by :meth:`loss_vector`.
        optimize_weights: Whether the leader optimizes the AMA weights (else ``w = 1``).
        optimize_boosts: Whether the leader optimizes the AMA boosts (else ``b = 0``).
        boost_range: Half-width ``B`` of the default search box ``[-B, B]`` of the boosts.
        boosts_by_height: Whether an optimal AMA is known whose boosts depend only on a state's
            height (decisions left) and the action, on an acyclic MDP; the gradient methods then
            search that family by default (their ``tied``).
        mdp: The :class:`~dmd_torch.mdp.TabularMDP` the mechanism controls (built by the subclass).
    """

    name: ClassVar[str] = "custom"
    distributions: ClassVar[tuple[str, ...]] = ("default",)
    min_size: ClassVar[int] = 1
    objective: ClassVar[LeaderObjective] = REVENUE
    optimize_weights: bool = False
    optimize_boosts: bool = True
    boost_range: float = 1.0
    boosts_by_height: ClassVar[bool] = False
    mdp: TabularMDP

    def __init__(self, n_agents: int, size: int, distribution: str | None = None) -> None:
        self.n_agents = check_int("n_agents", n_agents)
        self.size = check_int(f"{self.name} size", size, minimum=self.min_size)
        chosen = self.distributions[0] if distribution is None else distribution
        if chosen not in self.distributions:
            raise ValueError(f"unknown distribution {chosen!r} for {self.name}; allowed: {', '.join(self.distributions)}")
        self.distribution = chosen

    # ---------------------------------------------------------------- what a setting implements
    @property
    @abstractmethod
    def type_dim(self) -> int:
        """Number ``K`` of type coordinates per agent."""

    @abstractmethod
    def type_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper ends ``[n, K]`` of each agent's type support (used for misreports)."""

    @abstractmethod
    def sample_types(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws ``num`` independent type profiles ``[num, n, K]`` from the prior."""

    @abstractmethod
    def rewards(self, types: torch.Tensor) -> torch.Tensor:
        """Maps type profiles ``[B, n, K]`` to rewards ``r[B, n, S, A]``."""

    def loss_vector(self, types: torch.Tensor) -> torch.Tensor:
        """Per-state-action loss ``q[B, S, A]`` with loss ``= <q, nu>`` (objectives other than revenue)."""
        raise NotImplementedError(f"setting {self.name!r} has objective {self.objective.name!r} and no loss vector")

    def policy_loss(self, types: torch.Tensor, occupancy: PolicyOccupancy) -> torch.Tensor:
        """The loss ``<q, nu>`` of each solution ``[..., B]`` (``occupancy`` of the full problem).

        By default :meth:`loss_vector` contracted with the occupancy; a setting may compute it more
        cheaply for deterministic policies, e.g. from their paths alone (the scheduling makespan).
        """
        return occupancy.inner(self.checked_loss_vector(types))

    # ---------------------------------------------------------------- what a setting knows
    def known_optimum(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Weights ``[n]`` and boosts ``[S, A]`` of an AMA known to be optimal here, or ``None`` (default)."""
        return None

    def reward_scale(self) -> torch.Tensor:
        """The largest ``|r_i|`` each agent can have, ``[n]`` (for :mod:`dmd_torch.soundness`).

        By default the largest over the rewards of two profiles: every agent at the lower end of its
        type support, then at the upper end (exact where rewards are monotone in the types, as in
        the settings shipped). Computed once.
        """
        if getattr(self, "_reward_scale", None) is None:
            low, high = self.type_bounds()
            types = torch.stack([low, high]).to(self.mdp.dtype)
            r = self.checked_rewards(types.to(self.mdp.device))
            self._reward_scale = r.detach().abs().flatten(2).amax(-1).amax(0).cpu()
        return self._reward_scale

    def search_box(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper bounds ``[S, A]`` of the boosts that grid search samples (default ``[-B, B]``)."""
        high = torch.full(self.mdp.shape, float(self.boost_range), dtype=self.mdp.dtype, device=self.mdp.device)
        return -high, high

    @property
    def report_key(self) -> str:
        """The key the results and the report file this setting's runs under (default :attr:`name`)."""
        return self.name

    def describe(self, ama: Any) -> Description:
        """The AMA ``ama`` in this setting's terms (``mechanism.md``, :mod:`dmd_torch.description`).

        By default its weights, its largest boosts by state and action label, and a heatmap of the
        boosts; the settings shipped say what the boosts do in their own terms.
        """
        from dmd_torch.description import Description, boost_heatmap, markdown_table

        b = ama.boosts.detach().cpu()
        order = b.flatten().abs().argsort(descending=True)[:10].tolist()
        A = self.mdp.num_actions
        rows = [(self.mdp.state_labels[k // A], self.mdp.action_labels[k % A], float(b.flatten()[k])) for k in order]
        weights = ", ".join(f"{w:.4f}" for w in ama.weights.detach().cpu().tolist())
        return Description(
            f"AMA on {self.report_key} (n={self.n_agents}, size={self.size})",
            [f"Weights: {weights}. The largest boosts (the policy maximizes the weighted rewards plus the boosts):",
             markdown_table(["state", "action", "boost"], rows)],
            boost_heatmap(ama),
        )

    def config(self) -> dict[str, Any]:
        """The setting as a config block: ``_target_`` (the class's import path) and every constructor
        argument, read from the attribute of the same name (what ``mechanism.json`` records)."""
        cls = type(self)
        block: dict[str, Any] = {"_target_": f"{cls.__module__}.{cls.__qualname__}"}
        for name in _init_parameters(cls):
            if not hasattr(self, name):
                raise ValueError(f"{cls.__name__} must store its constructor argument {name!r} as an attribute "
                                 "of that name (or override config())")
            value = getattr(self, name)
            block[name] = list(value) if isinstance(value, tuple) else value
        return block

    @classmethod
    def shape_of(cls, **options: Any) -> tuple[int, int] | None:
        """``(S, A)`` of the MDP the constructor would build with ``options`` (every constructor
        argument, defaults filled in), from the sizes alone; ``None`` where the setting cannot
        tell before building it. :meth:`create` refuses a size that cannot fit in memory with it."""
        return None

    @classmethod
    def create(cls, **kwargs: Any) -> Setting:
        """``cls(**kwargs)``, with a one-line ``ValueError`` naming an argument the constructor does not
        take, or a size whose MDP and one solve would not fit in memory (:func:`dmd_torch.cost.check_fits`;
        checked before the MDP is built where :meth:`shape_of` knows its shape, else just after)."""
        from dmd_torch.cost import check_fits

        allowed = _init_parameters(cls)
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for {cls.name} ({cls.__name__}); "
                             f"allowed: {', '.join(allowed) or 'none'}")
        bound = inspect.signature(cls).bind_partial(**kwargs)
        bound.apply_defaults()
        n, size = bound.arguments.get("n_agents"), bound.arguments.get("size")
        sized = all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in (n, size))
        shape = cls.shape_of(**bound.arguments) if sized else None
        if shape is not None:  # an objective defined per instance counts as revenue's n + 1 problems
            check_fits(cls.name, n, size, *shape, needs_without=getattr(cls.objective, "needs_without", True))
        setting = cls(**kwargs)
        if shape is None:
            S, A = setting.mdp.shape
            check_fits(setting.name, setting.n_agents, setting.size, S, A, setting.mdp.next_states.shape[-1],
                       setting.objective.needs_without)
        return setting

    def to(self, device: torch.device | str) -> Setting:
        """Puts the MDP on ``device`` (in place, as ``nn.Module.to``) and returns the setting; rewards
        and losses are computed on the device of the types they are given."""
        device = torch.device(device)
        if self.mdp.device != device:
            self.mdp = self.mdp.to(device)
        return self

    def cost(self, method: Any = "reg_lp", heldout_profiles: int = 2_000, eval_profiles: int = 10_000) -> CostEstimate:
        """The estimated time and memory of training with ``method`` (a name, a method or its config)
        and evaluating: a :class:`dmd_torch.cost.CostEstimate`."""
        from dmd_torch.cost import estimate
        from dmd_torch.methods import make_method

        return estimate(self, make_method(method) if isinstance(method, str) else method, heldout_profiles, eval_profiles)

    # ---------------------------------------------------------------- checked at the boundary
    def check_types(self, types: torch.Tensor) -> torch.Tensor:
        """Validates a type tensor ``[B, n, K]``: a floating-point tensor of that shape, finite."""
        if not isinstance(types, torch.Tensor):
            raise TypeError(f"types must be a torch.Tensor, got {type(types).__name__}")
        want = (self.n_agents, self.type_dim)
        if types.dim() != 3 or tuple(types.shape[1:]) != want:
            raise ValueError(f"types must have shape [B, n, K] = [B, {want[0]}, {want[1]}], got {tuple(types.shape)}")
        if not types.is_floating_point():
            raise ValueError(f"types must be a floating-point tensor, got {types.dtype}")
        if not all_finite(types):
            raise ValueError("types contain NaN or inf")
        return types

    def checked_sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """:meth:`sample_types`, checked: ``[num, n, K]``, floating point, finite."""
        types = self.sample_types(check_int("profiles", num), generator)
        try:
            self.check_types(types)
            if types.shape[0] != num:
                raise ValueError(f"{num} profiles were asked for, {types.shape[0]} drawn")
            if types.dtype != self.mdp.dtype:
                raise ValueError(f"types must have the MDP's dtype {self.mdp.dtype}, got {types.dtype}")
        except (TypeError, ValueError) as err:
            raise ValueError(f"{type(self).__name__}.sample_types: {err}") from None
        return types

    def checked_rewards(self, types: torch.Tensor) -> torch.Tensor:
        """:meth:`rewards` of checked types, itself checked: ``[B, n, S, A]`` in the MDP's dtype and on
        the types' device (finiteness is checked on the solutions, which NaN or inf rewards reach)."""
        self.check_types(types)
        r = self.rewards(types)
        _check_output(self, "rewards", r, (types.shape[0], self.n_agents, *self.mdp.shape), types.device)
        return r

    def checked_loss_vector(self, types: torch.Tensor) -> torch.Tensor:
        """:meth:`loss_vector`, checked: ``[B, S, A]`` on the types' device."""
        q = self.loss_vector(types)
        _check_output(self, "loss_vector", q, (types.shape[0], *self.mdp.shape), types.device)
        return q

    # ---------------------------------------------------------------- description
    def state_label_json(self, label: Any) -> Any:
        """A state label as JSON (tuples become lists)."""
        return list(label) if isinstance(label, tuple) else label

    def __repr__(self) -> str:
        S, A = self.mdp.shape
        return (
            f"{type(self).__name__}(name={self.name!r}, n_agents={self.n_agents}, size={self.size}, "
            f"distribution={self.distribution!r}, S={S}, A={A}, objective={self.objective.name!r})"
        )


def _init_parameters(cls: type) -> list[str]:
    """The keyword parameters of ``cls.__init__`` (its options)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _check_output(setting: Setting, what: str, x: Any, shape: tuple[int, ...], device: torch.device) -> None:
    """Raises a one-line ``ValueError`` unless ``x`` is a floating tensor of ``shape`` on ``device``."""
    where = f"{type(setting).__name__}.{what}"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{where} must return a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape) != shape:
        raise ValueError(f"{where} must return shape {list(shape)}, got {list(x.shape)}")
    if x.dtype != setting.mdp.dtype:
        raise ValueError(f"{where} must return the MDP's dtype {setting.mdp.dtype}, got {x.dtype}")
    if x.device != device:
        raise ValueError(f"{where} must return a tensor on {device}, got one on {x.device}")


def history_tree_states(branching: int, horizon: int) -> int:
    """States of :func:`history_tree_mdp` with ``branching`` actions: ``sum_{t < horizon} branching^t``."""
    return sum(branching**t for t in range(horizon))


def history_tree_mdp(actions: list[int], horizon: int) -> tuple[TabularMDP, torch.Tensor]:
    """The finite-horizon MDP whose states are action histories ``(a_1, ..., a_t)``, ``t < horizon``.

    Transitions are deterministic, ``h -> h + (a)``; the ``horizon``-th action ends the episode.

    Returns:
        The MDP (state labels are history tuples, action labels ``actions``) and the length of each
        state's history ``[S]``.
    """
    labels: list[tuple[int, ...]] = [()]
    frontier: list[tuple[int, ...]] = [()]
    for _ in range(horizon - 1):
        frontier = [h + (a,) for h in frontier for a in actions]
        labels.extend(frontier)
    index = {h: k for k, h in enumerate(labels)}
    nxt = torch.tensor(
        [[index.get(h + (a,), -1) for a in actions] for h in labels], dtype=torch.long
    )
    depth = torch.tensor([len(h) for h in labels], dtype=torch.long)
    return TabularMDP.deterministic(labels, list(actions), nxt, start=0), depth


def uniform(shape: tuple[int, ...], high: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draws ``U[0, high]`` (``high`` broadcast against ``shape``) in float64."""
    return torch.rand(shape, generator=generator, dtype=torch.float64) * high
