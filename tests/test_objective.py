"""Tests of dmd_torch.objective: the leader's objectives and their one batched computation."""

from __future__ import annotations

import pytest
import torch

from dmd_torch import AMA, make_env
from dmd_torch.follower import EXACT, RegularizedFollower
from dmd_torch.objective import REVENUE, LeaderObjective, Loss, Revenue, leader_objective, payments

CELLS = [("seq_sales", 3, 2, "asymmetric"), ("scheduling", 2, 3, "asymmetric"), ("gridworld", 2, 3, "one_cell")]


def test_objectives_know_their_direction_and_needs():
    assert (REVENUE.name, REVENUE.sign, REVENUE.maximize, REVENUE.needs_without) == ("revenue", 1.0, True, True)
    span = Loss("makespan")
    assert (span.name, span.sign, span.maximize, span.needs_without, span.better) == ("makespan", -1.0, False, False, "lower")
    assert make_env("scheduling").objective.name == "makespan" and make_env("gridworld").objective is REVENUE


def test_payments_sum_to_the_revenue_identity(gen):
    """sum_i p_i = sw + sum_i (asw^(-i) - asw) / w_i, with p_i of Definition 3.1."""
    V, w = torch.rand(5, 3, generator=gen), torch.rand(3, generator=gen) + 0.5
    asw, without = torch.rand(5, generator=gen), torch.rand(5, 3, generator=gen)
    p = payments(V, w, asw, without)
    torch.testing.assert_close(p, (without - asw[:, None]) / w + V)
    torch.testing.assert_close(p.sum(-1), V.sum(-1) + ((without - asw[:, None]) / w).sum(-1))


@pytest.mark.parametrize("name, n, m, dist", CELLS)
def test_batched_candidates_equal_one_mechanism_at_a_time(gen, name, n, m, dist):
    """C parameter vectors in one batched solve give each mechanism's own exact outcome, and its
    regularized objective (AMA.forward), for revenue and for the makespan."""
    env = make_env(name, n_agents=n, size=m, distribution=dist)
    types = env.sample_types(12, gen)
    lw = 0.3 * torch.randn(4, n, generator=gen, dtype=torch.float64)
    b = torch.randn(4, *env.mdp.shape, generator=gen, dtype=torch.float64)
    exact = leader_objective(env, lw, b, types)
    soft = leader_objective(env, lw, b, types, RegularizedFollower(0.1))
    assert exact.shape == soft.shape == (4, 12)
    for k in range(4):
        ama = AMA(env, weights=lw[k].exp(), boosts=b[k])
        torch.testing.assert_close(exact[k], ama.outcome(types).objective, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(exact[k], ama.objective(types), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(soft[k], ama(types, alpha=0.1).detach(), rtol=1e-10, atol=1e-10)


def test_a_users_objective_runs_through_the_same_computation(gen):
    """An objective the library does not ship (expected welfare, maximized, no payments needed)."""

    class Welfare(LeaderObjective):
        name, sign, needs_without, better = "welfare", 1.0, False, "higher"

        def value(self, setting, types, r, solution):
            return solution.agent_values.sum(-1)

    class WelfareSales(type(make_env("seq_sales"))):
        objective = Welfare()

    env = WelfareSales(n_agents=3, size=2)
    types = env.sample_types(50, gen)
    ama = AMA(env, boosts=torch.rand(env.mdp.shape, generator=gen, dtype=torch.float64))
    torch.testing.assert_close(ama.objective(types), ama.outcome(types).welfare, rtol=0, atol=0)
    assert (AMA.vcg(env).objective(types) >= ama.objective(types) - 1e-12).all()  # VCG maximizes welfare


def test_nan_objective_is_refused(gen):
    class BadLoss(type(make_env("scheduling"))):
        def policy_loss(self, types, occupancy):
            return super().policy_loss(types, occupancy) * float("nan")

    env = BadLoss()
    with pytest.raises(ValueError, match="produced a NaN or inf makespan"):
        leader_objective(env, torch.zeros(2, dtype=torch.float64), torch.zeros(env.mdp.shape, dtype=torch.float64),
                         env.sample_types(3, gen), EXACT)


def test_revenue_is_the_revenue_class():
    assert isinstance(REVENUE, Revenue) and repr(REVENUE) == "Revenue('revenue')"


def test_a_revenue_subclass_is_not_fused(gen):
    """The fused closed form computes the revenue itself; a subclass that changes the value keeps its own."""
    class HalfRevenue(Revenue):
        def value(self, setting, types, r, solution):
            return 0.5 * super().value(setting, types, r, solution)

    class HalfSales(type(make_env("seq_sales"))):
        objective = HalfRevenue()

    env, base = HalfSales(n_agents=2, size=2), make_env("seq_sales", n_agents=2, size=2)
    types = env.sample_types(5, gen)
    lw, b = torch.zeros(2, dtype=torch.float64), torch.rand(env.mdp.shape, generator=gen, dtype=torch.float64)
    follower = RegularizedFollower(0.05)
    torch.testing.assert_close(leader_objective(env, lw, b, types, follower),
                               0.5 * leader_objective(base, lw, b, types, follower), rtol=1e-12, atol=1e-12)
