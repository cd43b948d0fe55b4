"""Starting points of the gradient methods (the paper's Algorithm 1, lines 1-2).

Algorithm 1 takes the ``m`` best points of a grid search as starting points, runs the gradient
method from each, and returns the one with the best expected loss. :class:`MultiStart` makes the
starts of a :class:`~dmd_torch.config.MultiStartConfig`: the ``starts`` best of ``grid_points``
Sobol candidates (:class:`~dmd_torch.methods.grid.GridSearch`, scored on ``grid_profiles`` common
profiles), or, with ``grid_points = 0``, ``starts`` draws of the initial mechanism (``w = 1``,
``b ~ U[0, 1]``). Choosing the winner by exact evaluation on the held-out sample is done by the
gradient loop (:mod:`dmd_torch.methods.gradient`).
"""

from __future__ import annotations

import torch

from dmd_torch.config import MultiStartConfig
from dmd_torch.mechanism import AMA
from dmd_torch.methods.base import Callback, initial_mechanism, restore, snapshot, stream_seed
from dmd_torch.methods.grid import GridSearch

__all__ = ["MultiStart"]


class MultiStart:
    """Where the gradient methods start (Algorithm 1), from a :class:`MultiStartConfig`."""

    def __init__(self, config: MultiStartConfig) -> None:
        self.config = config

    @property
    def grid(self) -> GridSearch | None:
        """The grid search that picks the starts, or ``None``."""
        grid_cfg = self.config.grid_config()
        return None if grid_cfg is None else GridSearch(grid_cfg)

    def total_work(self) -> int:
        """Grid candidates to score."""
        return self.config.grid_points

    def points(
        self, ama: AMA, init: str, heldout: torch.Tensor, seed: int, callback: Callback | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The starting points as ``(log_weights, boosts)`` snapshots (``ama`` is left at the first).

        Args:
            ama: The mechanism (its fixed parameters are kept by every start).
            init: Initial mechanism without a grid (see :func:`~dmd_torch.methods.base.initial_mechanism`).
            heldout: Held-out profiles (the grid search reports its best's held-out score).
            seed: Seed of the random streams.
            callback: Receives the grid search's events.
        """
        grid = self.grid
        if grid is not None:
            result = grid.run(ama, heldout=heldout, seed=seed, callback=callback)
            return [(lw, b) for _, lw, b in result.top]
        out = []
        for k in range(self.config.starts):
            gen = torch.Generator().manual_seed(stream_seed(seed, f"init-{k}"))
            initial_mechanism(ama, init, gen)
            out.append(snapshot(ama))
        restore(ama, out[0])
        return out
