"""Starting points of the gradient methods (the paper's Algorithm 1, lines 1-2).

Algorithm 1 takes the ``m`` best points of a grid search as starting points, runs the gradient
method from each, and returns the one with the best expected loss. :class:`MultiStart` describes
where the starts come from: the ``starts`` best of ``grid_points`` Sobol candidates
(:class:`~dmd_torch.methods.grid.GridSearch`, scored on ``grid_profiles`` common profiles), or, with
``grid_points = 0``, ``starts`` draws of the spec's initial mechanism (``w = 1``, ``b ~ U[0, 1]``).
Choosing the winner by exact evaluation on the held-out sample is done by the gradient loop
(:mod:`dmd_torch.methods.gradient`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dmd_torch.mechanism import AMA
from dmd_torch.checks import check_int
from dmd_torch.methods.base import Callback, initial_mechanism, restore, snapshot, stream_seed
from dmd_torch.methods.grid import GridSearch

__all__ = ["MultiStart"]


@dataclass
class MultiStart:
    """Where the gradient methods start (Algorithm 1).

    Attributes:
        starts: Number of starting points ``m >= 1``.
        grid_points: Sobol candidates to pick them from; ``0`` uses ``starts`` random initial mechanisms.
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
            raise ValueError(
                f"multistart starts must be <= grid_points = {self.grid_points}, got {self.starts}"
            )

    @property
    def grid(self) -> GridSearch | None:
        """The grid search that picks the starts, or ``None``."""
        if not self.grid_points:
            return None
        return GridSearch(num_points=self.grid_points, profiles=self.grid_profiles, top_k=self.starts)

    def total_work(self) -> int:
        """Grid candidates to score."""
        return self.grid_points

    def points(
        self, ama: AMA, init: str, heldout: torch.Tensor, seed: int, callback: Callback | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The starting points as ``(log_weights, boosts)`` snapshots (``ama`` is left at the first).

        Args:
            ama: The mechanism (its fixed parameters are kept by every start).
            init: Initial mechanism without a grid (see :func:`initial_mechanism`).
            heldout: Held-out profiles (the grid search reports its best's held-out score).
            seed: Seed of the random streams.
            callback: Receives the grid search's events.
        """
        grid = self.grid
        if grid is not None:
            result = grid.run(ama, heldout=heldout, seed=seed, callback=callback)
            return [(lw, b) for _, lw, b in result.top]
        out = []
        for k in range(self.starts):
            gen = torch.Generator().manual_seed(stream_seed(seed, f"init-{k}"))
            initial_mechanism(ama, init, gen)
            out.append(snapshot(ama))
        restore(ama, out[0])
        return out
