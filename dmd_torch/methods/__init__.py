"""Outer optimization methods over the AMA parameters (paper, section 4 and Algorithm 1).

* :class:`GridSearch` (``grid``): Sobol candidates scored exactly on common profiles.
* :class:`ZerothOrder` (``zeroth_order``): bilevel zeroth-order gradients (Sow, Ji & Liang 2022).
* :class:`RegularizedLP` (``reg_lp``): gradients through the entropy-regularized follower.

All share the :class:`Method` interface (``check_setting``, ``run(ama, heldout=, seed=, callback=)``);
the gradient methods start from a :class:`MultiStart` (Algorithm 1). :func:`make_method` builds one by
name from keyword arguments (e.g. a Hydra ``method`` config block).
"""

from __future__ import annotations

from typing import Any

from dmd_torch.methods.base import (
    Callback,
    Method,
    MethodResult,
    OptimizerSpec,
    SchedulerSpec,
    StepEvent,
    initial_mechanism,
)
from dmd_torch.methods.gradient import GradientMethod
from dmd_torch.methods.grid import GridSearch
from dmd_torch.methods.multistart import MultiStart
from dmd_torch.methods.reg_lp import RegularizedLP
from dmd_torch.methods.zeroth_order import ZerothOrder

__all__ = [
    "METHODS",
    "make_method",
    "Method",
    "MethodResult",
    "StepEvent",
    "Callback",
    "OptimizerSpec",
    "SchedulerSpec",
    "MultiStart",
    "GradientMethod",
    "GridSearch",
    "ZerothOrder",
    "RegularizedLP",
    "initial_mechanism",
]

#: Registry of the methods by name.
METHODS: dict[str, type[Method]] = {
    GridSearch.name: GridSearch,
    ZerothOrder.name: ZerothOrder,
    RegularizedLP.name: RegularizedLP,
}


def make_method(name: str, **kwargs: Any) -> Method:
    """Builds a method by registry name, validating every argument before any work.

    Args:
        name: ``grid``, ``zeroth_order`` or ``reg_lp``.
        **kwargs: The method's attributes (see its class); nested ``optimizer``, ``scheduler`` and
            ``multistart`` may be mappings.

    Raises:
        ValueError: On an unknown name or key, or an out-of-range value (one line, with the allowed values).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(METHODS)}")
    cls = METHODS[name]
    allowed = [f for f in cls.__dataclass_fields__ if f != "name"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)} for method {name}; allowed: {', '.join(allowed)}")
    return cls(**kwargs)
