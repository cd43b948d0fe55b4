"""What a backend of the regularized follower problem provides (see :mod:`dmd_torch.regularized`)."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from dmd_torch.mdp import TabularMDP

__all__ = ["Backend", "NoOptions"]


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a backend that takes none."""


class Backend(ABC):
    """One solver of ``max_nu c.nu - alpha sum nu log nu`` s.t. ``M nu = mu0`` (paper, equation 13).

    A backend declares where it applies (:meth:`why_not`) and its typed options (:attr:`Options`,
    a frozen dataclass that checks its values). :meth:`solve` returns the occupancies of a batch,
    differentiable in ``c`` with autograd.
    """

    #: Registry name (``tree``, ``newton``, ``cvxpylayers``).
    name: ClassVar[str]
    #: The dataclass of its options.
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None) -> None:
        self.options = self.Options() if options is None else options

    @classmethod
    def why_not(cls, mdp: TabularMDP) -> str | None:
        """Why the backend does not apply to ``mdp``, or ``None`` where it does (default: always applies)."""
        return None

    @classmethod
    def parse_options(cls, options: Mapping[str, Any]) -> Any:
        """``options`` as :attr:`Options`; a one-line ``ValueError`` on a key it does not take."""
        fields = [f.name for f in dataclasses.fields(cls.Options)]
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise ValueError(
                f"backend {cls.name!r} takes no option(s) {', '.join(unknown)}; allowed: {', '.join(fields) or 'none'}"
            )
        return cls.Options(**options)

    @abstractmethod
    def solve(
        self, mdp: TabularMDP, c: torch.Tensor, alpha: float, lead: tuple[int, ...], group: int = 1
    ) -> torch.Tensor:
        """Occupancies ``nu[B, S, A]`` for rewards ``c[B, S, A]``.

        Args:
            lead: The caller's batch shape, for errors.
            group: The batch comes in consecutive groups of this many related problems whose first
                is the group's head (the ``n + 1`` follower problems of a profile); a backend may
                use that to start the others from the head's solution.
        """
