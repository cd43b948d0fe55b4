"""Input validation shared across the library: one-line ``ValueError``s naming the value and what is allowed."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["check_int", "check_float", "check_bool", "check_choice", "check_device", "check_finite", "all_finite"]


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """Returns ``value`` if it is an integer ``>= minimum``, else raises a one-line ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_float(name: str, value: Any, positive: bool = True, allow_zero: bool = False) -> float:
    """Returns ``value`` as a float if it is finite and ``> 0`` (or ``>= 0``), else raises ``ValueError``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and positive:
        ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number{' ' + bound if positive else ''}, got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """Returns ``value`` if it is ``True`` or ``False``, else raises a one-line ``ValueError``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """Returns ``value`` if it is one of ``allowed``, else raises a one-line ``ValueError``."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
    return value


def check_device(name: str, value: Any) -> torch.device:
    """``value`` as a ``torch.device`` if it names the CPU or a CUDA device torch can use, else a
    one-line ``ValueError`` (``name``: how the caller spells the option, e.g. ``device``)."""
    try:
        device = torch.device(str(value))
    except RuntimeError:
        raise ValueError(f"unknown {name} {value!r}; allowed: cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported {name} {value!r}; allowed: cpu, cuda, cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} {value!r} is not available here; allowed: cpu")
    return device


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every entry of ``tensor`` is finite, with one small op where it is: a finite sum has
    finite terms (NaN and inf propagate through it); a sum that is not (which finite entries can
    reach by overflow) is settled by ``max |x|``. For the checks on every training step."""
    if tensor.numel() == 0:
        return True
    x = tensor.detach()
    return math.isfinite(float(x.sum())) or math.isfinite(float(x.abs().amax()))


def check_finite(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Returns ``tensor`` if every entry is finite, else raises ``ValueError("<name> contains NaN or inf")``."""
    if not all_finite(tensor):
        raise ValueError(f"{name} contains NaN or inf")
    return tensor
