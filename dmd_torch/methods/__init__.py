"""Outer optimization methods over the AMA parameters (paper, section 4 and Algorithm 1).

* :class:`GridSearch` (``grid``): Sobol candidates scored exactly on common profiles.
* :class:`RegularizedLP` (``reg_lp``): gradients through the entropy-regularized follower.
* :class:`ZerothOrder` (``zeroth_order``): bilevel zeroth-order gradients (Sow, Ji & Liang 2022).

The two gradient methods are one :class:`GradientMethod` with different
:class:`GradientEstimator`\\ s, started by a :class:`MultiStart` (Algorithm 1). Each method is built
from its configuration dataclass (:mod:`dmd_torch.config`), the same that the Hydra app composes:
:func:`make_method` builds one by name with the same defaults as ``method=<name>`` on the command line.
"""

from __future__ import annotations

from typing import Any

from dmd_torch.config import VARIANTS, MethodConfig, method_config
from dmd_torch.methods.base import Callback, Method, MethodResult, StepEvent, initial_mechanism
from dmd_torch.methods.gradient import GradientEstimator, GradientMethod
from dmd_torch.methods.grid import GridSearch
from dmd_torch.methods.multistart import MultiStart
from dmd_torch.methods.reg_lp import RegularizedEstimator, RegularizedLP
from dmd_torch.methods.zeroth_order import ZerothOrder, ZerothOrderEstimator, ZerothOrderFollower

__all__ = [
    "METHODS",
    "make_method",
    "Method",
    "MethodResult",
    "StepEvent",
    "Callback",
    "MultiStart",
    "GradientEstimator",
    "GradientMethod",
    "GridSearch",
    "RegularizedEstimator",
    "RegularizedLP",
    "ZerothOrder",
    "ZerothOrderEstimator",
    "ZerothOrderFollower",
    "initial_mechanism",
]

#: Registry of the methods by name.
METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (GridSearch, ZerothOrder, RegularizedLP)}


def make_method(method: str | MethodConfig, **overrides: Any) -> Method:
    """Builds a method by name (with ``overrides`` over its defaults) or from its configuration.

    Args:
        method: ``grid``, ``zeroth_order``, ``reg_lp`` (this library's best known defaults), a
            named variant such as ``reg_lp_paper`` (the paper's hyperparameters,
            :data:`dmd_torch.config.VARIANTS`), or a :class:`~dmd_torch.config.MethodConfig`.
        **overrides: Configuration values, e.g. ``steps=500``, ``optimizer={"name": "SGD", "lr": 0.1}``.

    Raises:
        ValueError: On an unknown name or key, a value of the wrong type, or one out of range
            (one line, with what is allowed).
    """
    if isinstance(method, MethodConfig):
        if overrides:
            raise ValueError("pass either a method config or overrides, not both")
        config = method
    elif method in METHODS or method in VARIANTS:
        config = method_config(method, overrides)
    else:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join([*METHODS, *VARIANTS])}")
    if config.name not in METHODS:
        raise ValueError(f"unknown method {config.name!r}; allowed: {', '.join(METHODS)}")
    return METHODS[config.name](config)
