"""Random MDPs shared by the test modules."""

from __future__ import annotations

import torch

from dmd_torch.mdp import TabularMDP


def random_layered_mdp(gen: torch.Generator, layers: int = 3, width: int = 3, A: int = 3, density: float = 0.5) -> TabularMDP:
    """A random stochastic finite-horizon MDP: states in time layers, transitions to the next layer."""
    S = layers * width
    P = torch.zeros(S, A, S, dtype=torch.float64)
    for t in range(layers - 1):
        block = torch.rand(width, A, width, generator=gen, dtype=torch.float64)
        block = block * (torch.rand(width, A, width, generator=gen) < density)
        block[..., 0] += 1e-3  # every row reaches the next layer
        P[t * width:(t + 1) * width, :, (t + 1) * width:(t + 2) * width] = block / block.sum(-1, keepdim=True)
    mu0 = torch.zeros(S, dtype=torch.float64)
    mu0[:width] = torch.rand(width, generator=gen, dtype=torch.float64) + 0.1
    return TabularMDP.from_dense(P, mu0 / mu0.sum())


def random_discounted_mdp(gen: torch.Generator, S: int = 6, A: int = 3, gamma: float = 0.9, density: float = 0.5) -> TabularMDP:
    """A random stochastic discounted MDP with cycles."""
    P = torch.rand(S, A, S, generator=gen, dtype=torch.float64) * (torch.rand(S, A, S, generator=gen) < density)
    P[..., 0] += 1e-3
    P = P / P.sum(-1, keepdim=True)
    mu0 = torch.rand(S, generator=gen, dtype=torch.float64) + 0.1
    return TabularMDP.from_dense(P, mu0 / mu0.sum(), gamma=gamma)
