"""The settings: the paper's three, dynamic matching and static auctions (:func:`make_env`), and any
:class:`Setting` subclass by import path.

A setting is described by a config block ``{"_target_": "<module>.<Class>", **constructor arguments}``
(:meth:`Setting.config`, Hydra's ``_target_`` convention); :func:`setting_from_config` builds one from
such a block, or from a block that names a registered setting (``{"name": "seq_sales", ...}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.utils import get_class

from dmd_torch.envs.base import Setting
from dmd_torch.envs.gridworld import Gridworld
from dmd_torch.envs.matching import DynamicMatching
from dmd_torch.envs.sales import SequentialSales
from dmd_torch.envs.scheduling import TaskScheduling
from dmd_torch.envs.static import StaticAuction

__all__ = ["Setting", "SequentialSales", "TaskScheduling", "Gridworld", "DynamicMatching", "StaticAuction", "ENVS",
           "make_env", "setting_from_config"]

#: The registered settings by name.
ENVS: dict[str, type[Setting]] = {
    cls.name: cls for cls in (SequentialSales, TaskScheduling, Gridworld, DynamicMatching, StaticAuction)
}


def make_env(name: str, **options: Any) -> Setting:
    """Builds a registered setting by name: ``make_env("seq_sales", n_agents=3, size=2)``.

    Args:
        name: ``seq_sales``, ``scheduling``, ``gridworld``, ``matching`` or ``static_auction``.
        **options: The setting's constructor arguments (``n_agents``, ``size``, ``distribution``, and
            ``clamped`` for scheduling, ``gamma`` for the gridworld and matching, ``valuation`` for
            static auctions); missing ones take its defaults.

    Raises:
        ValueError: On an unknown name or option, or a bad value (one line).
    """
    if name not in ENVS:
        raise ValueError(f"unknown setting {name!r}; allowed: {', '.join(ENVS)}")
    return ENVS[name].create(**options)


def setting_class(target: Any) -> type[Setting]:
    """The :class:`Setting` subclass an import path names (a one-line ``ValueError`` otherwise)."""
    if not isinstance(target, str) or not target:
        raise ValueError(f"env _target_ must be an import path such as my_pkg.module.MySetting, got {target!r}")
    try:
        cls = get_class(target)
    except Exception as err:  # Hydra raises ImportError or ValueError, with the cause in the message
        raise ValueError(f"cannot import env _target_ {target!r}: {str(err).splitlines()[0]}") from None
    if not (isinstance(cls, type) and issubclass(cls, Setting)):
        raise ValueError(f"env _target_ {target!r} is not a subclass of dmd_torch.Setting")
    return cls


def setting_from_config(block: Mapping[str, Any]) -> Setting:
    """Builds the setting a config block describes: ``_target_`` (an import path) or ``name`` (a
    registered setting), and the constructor's arguments.

    Raises:
        ValueError: On a block without either key, an unknown or unimportable setting, an argument
            the constructor does not take, or a bad value (one line).
    """
    if not isinstance(block, Mapping):
        raise ValueError(f"an env block must be a mapping, got {block!r}")
    options = {str(k): v for k, v in block.items() if k not in ("_target_", "name")}
    if "_target_" in block:
        return setting_class(block["_target_"]).create(**options)
    if "name" in block:
        return make_env(block["name"], **options)
    raise ValueError(f"an env block needs _target_ (an import path) or name (one of {', '.join(ENVS)})")
