"""Tests of dmd_torch.follower: the affine problems and the exact and regularized responses."""

from __future__ import annotations

import pytest
import torch

from dmd_torch import make_env
from dmd_torch.exact import solve_exact, solve_lp_highs
from dmd_torch.follower import (
    EXACT,
    ExactFollower,
    RegularizedFollower,
    affine_problems,
    affine_rewards,
    certified_without,
    welfare_without,
)
from dmd_torch.regularized import regularized_occupancy

CELLS = [("seq_sales", 3, 2, "asymmetric"), ("scheduling", 2, 3, "asymmetric"), ("gridworld", 3, 3, "one_cell")]


def _params(env, gen, C=None):
    lead = () if C is None else (C,)
    lw = 0.3 * torch.randn(*lead, env.n_agents, generator=gen, dtype=torch.float64)
    b = env.boost_range / 4 * torch.randn(*lead, *env.mdp.shape, generator=gen, dtype=torch.float64)
    return lw, b


@pytest.mark.parametrize("name, n, m, dist", CELLS)
def test_exact_follower_agrees_with_highs(gen, name, n, m, dist):
    """asw and every asw^(-i) equal the occupancy LP's optimum (HiGHS), for one and for C parameter vectors."""
    env = make_env(name, n_agents=n, size=m, distribution=dist)
    r = env.checked_rewards(env.sample_types(6, gen))
    for C in (None, 3):
        lw, b = _params(env, gen, C)
        sol = EXACT.respond(env.mdp, r, lw, b, without=True)
        c = affine_rewards(r, lw.exp().unsqueeze(-2), b.unsqueeze(-3))  # [..., P, n + 1, S, A]
        values, _ = solve_lp_highs(env.mdp, c)
        want = torch.as_tensor(values)
        torch.testing.assert_close(sol.asw, want[..., 0], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(sol.asw_without, want[..., 1:], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(sol.agent_values, sol.occupancy.inner(r, extra=1))
        only = EXACT.respond(env.mdp, r, lw, b, without=False)
        assert only.asw_without is None and torch.equal(only.policy, sol.policy)


@pytest.mark.parametrize("name, n, m, dist", CELLS)
def test_candidate_start_gives_the_same_values(gen, name, n, m, dist):
    env = make_env(name, n_agents=n, size=m, distribution=dist)
    r = env.checked_rewards(env.sample_types(20, gen))
    lw, b = _params(env, gen, 4)
    a = EXACT.respond(env.mdp, r, lw, b, without=True)
    c = ExactFollower(candidate_start=True).respond(env.mdp, r, lw, b, without=True)
    torch.testing.assert_close(c.asw, a.asw, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c.asw_without, a.asw_without, rtol=1e-12, atol=1e-12)


def test_exact_follower_refuses_nan_rewards(gen):
    env = make_env("gridworld", n_agents=2, size=3)
    r = env.checked_rewards(env.sample_types(3, gen))
    r[1, 0, 2, 1] = float("nan")
    lw, b = _params(env, gen)
    with pytest.raises(ValueError, match="NaN or inf"):
        EXACT.respond(env.mdp, r, lw, b, without=True)


@pytest.mark.parametrize("name, n, m, dist", CELLS)
def test_regularized_follower(gen, name, n, m, dist):
    """One batched call of the n + 1 regularized problems; asw is the regularized optimum
    <c, nu> + alpha H(nu) and its gradient in c is nu (envelope theorem)."""
    env = make_env(name, n_agents=n, size=m, distribution=dist)
    r = env.checked_rewards(env.sample_types(4, gen))
    lw, b = _params(env, gen)
    b.requires_grad_(True)
    alpha = 0.1
    sol = RegularizedFollower(alpha).respond(env.mdp, r, lw, b, without=True)
    c = affine_rewards(r, lw.exp(), b.detach())
    nu = regularized_occupancy(env.mdp, c, alpha)
    value = (c * nu).sum((-2, -1)) - alpha * torch.special.xlogy(nu, nu).sum((-2, -1))
    torch.testing.assert_close(sol.asw, value[:, 0].detach())
    torch.testing.assert_close(sol.asw_without, value[:, 1:].detach())
    torch.testing.assert_close(sol.occupancy.dense(), nu[:, 0].detach())
    (grad,) = torch.autograd.grad(sol.asw.sum(), b)
    torch.testing.assert_close(grad, nu[:, 0].detach().sum(0))
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        RegularizedFollower(0.0)


def test_affine_rewards_definition_with_and_without_autograd(gen):
    """[..., n+1, S, A]: index 0 is sum_i w_i r_i + b, index 1+i drops agent i; broadcast over candidates."""
    r = torch.rand(6, 3, 5, 4, generator=gen, dtype=torch.float64)
    w = torch.rand(2, 1, 3, generator=gen, dtype=torch.float64) + 0.1  # 2 candidates x 6 profiles
    b = torch.randn(2, 1, 5, 4, generator=gen, dtype=torch.float64)
    wr = w[..., None, None] * r
    expected = torch.stack([wr.sum(-3) + b] + [wr.sum(-3) + b - wr[..., i, :, :] for i in range(3)], -3)
    fast = affine_rewards(r, w, b)
    torch.testing.assert_close(fast, expected, rtol=0, atol=1e-15)
    graded = affine_rewards(r, w.requires_grad_(), b)
    torch.testing.assert_close(graded, fast, rtol=0, atol=0)
    assert graded.requires_grad and not fast.requires_grad
    torch.testing.assert_close(affine_rewards(r, w.detach(), b, without=False), expected[..., 0, :, :])


@pytest.mark.parametrize("name, n, m, dist", [("gridworld", 4, 3, "one_cell"), ("gridworld", 2, 3, "uniform"), ("seq_sales", 4, 2, "symmetric")])
def test_welfare_without_certificate_is_exact(gen, name, n, m, dist):
    """asw^(-i) = asw for agents with r_i >= 0 and V_i = 0 (taken without a solve on cyclic MDPs)
    equals the solved value; every agent's asw^(-i) matches an independent solve."""
    from dmd_torch.exact import optimal_values, policy_occupancy

    env = make_env(name, n_agents=n, size=m, distribution=dist)
    w = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
    b = 0.3 * torch.randn(env.mdp.shape, generator=gen, dtype=torch.float64)
    r = env.rewards(env.sample_types(60, gen))
    total, minus = affine_problems(r, w, b)
    sol = solve_exact(env.mdp, total)
    V = policy_occupancy(env.mdp, sol.policy).inner(r, extra=1)
    certified = certified_without(env.mdp, r, V)
    if env.mdp.levels is None and dist == "one_cell":
        assert certified.any()  # the certificate is exercised
    if env.mdp.levels is not None:
        assert not certified.any()  # backward induction solves them all
    want = optimal_values(env.mdp, minus)
    for start in ({"init_policy": sol.policy.unsqueeze(-2)}, {"init_values": sol.values.unsqueeze(-2)}):
        got = welfare_without(env.mdp, r, minus, sol.value, V, **start)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[certified], sol.value.unsqueeze(-1).expand_as(got)[certified], rtol=0, atol=0)


def test_regularized_revenue_is_fused_only_where_it_applies(gen):
    """The closed form serves one parameter vector on a history tree with rewards not differentiated;
    elsewhere (``None``) the payments come from :meth:`respond`, and both give the same revenue."""
    env = make_env("seq_sales", n_agents=3, size=2, distribution="asymmetric")
    r = env.checked_rewards(env.sample_types(4, gen))
    lw, b = _params(env, gen)
    fused = RegularizedFollower(0.1).revenue(env.mdp, r, lw, b)
    assert fused is not None
    for follower, args in (
        (RegularizedFollower(0.1, "newton"), (r, lw, b)),  # not the tree backend
        (RegularizedFollower(0.1), (r, lw.expand(2, 3), b)),  # two parameter vectors
        (RegularizedFollower(0.1), (r.clone().requires_grad_(), lw, b)),  # gradients in the rewards asked for
        (RegularizedFollower(0.1), (r.float(), lw.float(), b.float())),  # not the MDP's dtype
    ):
        assert follower.revenue(env.mdp, *args) is None
    assert EXACT.revenue(env.mdp, r, lw, b) is None
    grid = make_env("gridworld", n_agents=2, size=3)
    assert RegularizedFollower(0.1).revenue(grid.mdp, grid.checked_rewards(grid.sample_types(2, gen)),
                                            *_params(grid, gen)) is None
    sol = RegularizedFollower(0.1, "newton").respond(env.mdp, r, lw, b, without=True)
    revenue = (sol.agent_values + (sol.asw_without - sol.asw.unsqueeze(-1)) / sol.weights).sum(-1)
    torch.testing.assert_close(fused, revenue, rtol=0, atol=1e-8)
