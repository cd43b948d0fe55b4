"""The paper's settings and the factory :func:`make_env`."""

from __future__ import annotations

from typing import Any

from dmd_torch.checks import check_int
from dmd_torch.envs.base import Setting
from dmd_torch.envs.gridworld import GRIDWORLD_DISTRIBUTIONS, Gridworld
from dmd_torch.envs.sales import SALES_DISTRIBUTIONS, SequentialSales
from dmd_torch.envs.scheduling import SCHEDULING_DISTRIBUTIONS, TaskScheduling

__all__ = ["Setting", "SequentialSales", "TaskScheduling", "Gridworld", "make_env", "ENVS"]

#: Factory names, their classes and allowed type distributions (the first is the default).
ENVS: dict[str, tuple[type[Setting], tuple[str, ...]]] = {
    "seq_sales": (SequentialSales, SALES_DISTRIBUTIONS),
    "scheduling": (TaskScheduling, SCHEDULING_DISTRIBUTIONS),
    "gridworld": (Gridworld, GRIDWORLD_DISTRIBUTIONS),
}


def make_env(
    name: str, n_agents: int = 2, size: int = 2, distribution: str | None = None, **options: Any
) -> Setting:
    """Builds one of the paper's settings.

    Args:
        name: ``seq_sales``, ``scheduling`` or ``gridworld``.
        n_agents: Number of agents ``n >= 1``.
        size: Items (sales), tasks (scheduling) or grid side (gridworld), ``>= 1``.
        distribution: Type prior; ``None`` takes the setting's first (the paper's symmetric one).
        **options: Setting options: ``clamped`` (scheduling), ``gamma`` (gridworld).

    Raises:
        ValueError: On an unknown name, distribution or option, or an out-of-range size.
    """
    if name not in ENVS:
        raise ValueError(f"unknown setting {name!r}; allowed: {', '.join(ENVS)}")
    cls, dists = ENVS[name]
    check_int("n_agents", n_agents)
    check_int("size", size)
    distribution = dists[0] if distribution is None else distribution
    if distribution not in dists:
        raise ValueError(f"unknown distribution {distribution!r} for {name}; allowed: {', '.join(dists)}")
    allowed = {"scheduling": ("clamped",), "gridworld": ("gamma",)}.get(name, ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for {name}; allowed: {', '.join(allowed) or 'none'}"
        )
    return cls(n_agents=n_agents, size=size, distribution=distribution, **options)
