"""The exact solvers against SciPy's HiGHS on the occupancy LP (paper, equation 2)."""

import math

import pytest
import torch

from dmd_torch import make_env
from dmd_torch.exact import mean_reward_policy, occupancy_of_policy, optimal_values, solve_exact, solve_lp_highs
from tests.helpers import random_discounted_mdp, random_layered_mdp


def _check_against_highs(mdp, c):
    sol = solve_exact(mdp, c)
    for b in range(c.shape[0]):
        lp_value, _ = solve_lp_highs(mdp, c[b])
        assert abs(sol.value[b].item() - lp_value) <= 1e-7 * max(1.0, abs(lp_value))
    # The occupancy is feasible and attains the value.
    M = mdp.flow_matrix().to_dense()
    flows = sol.occupancy.flatten(1) @ M.T
    torch.testing.assert_close(flows, mdp.mu0.expand_as(flows), atol=1e-10, rtol=0)
    torch.testing.assert_close((c * sol.occupancy).sum((-2, -1)), sol.value, atol=1e-9, rtol=1e-9)
    assert (sol.occupancy >= 0).all()
    return sol


def test_finite_horizon_stochastic_matches_highs(gen):
    count = 0
    for trial in range(10):
        mdp = random_layered_mdp(gen, layers=2 + trial % 3, width=3, A=2 + trial % 3)
        c = torch.randn(8, *mdp.shape, generator=gen, dtype=torch.float64)
        _check_against_highs(mdp, c)
        count += 8
    assert count == 80


def test_discounted_stochastic_matches_highs(gen):
    for trial in range(10):
        mdp = random_discounted_mdp(gen, S=4 + trial % 4, A=2 + trial % 3, gamma=0.5 + 0.04 * trial)
        c = torch.randn(8, *mdp.shape, generator=gen, dtype=torch.float64)
        _check_against_highs(mdp, c)


@pytest.mark.parametrize("name, n, m", [("seq_sales", 3, 2), ("scheduling", 2, 3), ("gridworld", 2, 3)])
def test_settings_match_highs(gen, name, n, m):
    env = make_env(name, n_agents=n, size=m)
    r = env.rewards(env.sample_types(15, gen))
    c = r.sum(1) + torch.randn(env.mdp.shape, generator=gen, dtype=torch.float64)
    _check_against_highs(env.mdp, c)


def test_values_satisfy_bellman_and_policy_is_greedy(gen):
    mdp = random_discounted_mdp(gen, S=6, A=3, gamma=0.9)
    c = torch.randn(5, *mdp.shape, generator=gen, dtype=torch.float64)
    sol = solve_exact(mdp, c)
    q = c + 0.9 * mdp.expected_next(sol.values)
    torch.testing.assert_close(q, sol.q)
    torch.testing.assert_close(sol.values, q.max(-1).values)
    torch.testing.assert_close(q.gather(-1, sol.policy.unsqueeze(-1)).squeeze(-1), sol.values)


def test_ties_break_to_lowest_action():
    env = make_env("seq_sales", n_agents=2, size=2)
    sol = solve_exact(env.mdp, torch.zeros(1, *env.mdp.shape, dtype=torch.float64))
    assert (sol.policy == 0).all()
    mdp = random_discounted_mdp(torch.Generator().manual_seed(0), S=4, A=3)
    sol = solve_exact(mdp, torch.ones(2, 4, 3, dtype=torch.float64))
    assert (sol.policy == 0).all()


@pytest.mark.parametrize("kind", ["gridworld", "stochastic"])
def test_policy_iteration_terminates_at_a_tie_tolerant_optimum(gen, kind):
    """With a wide tie tolerance the multi-step improvement can leave a non-optimal policy unchanged
    (a one-step gap between tol and tol / (1 - gamma)); policy iteration must still terminate, at a
    policy whose every action is near-maximal for its own values."""
    from dmd_torch.exact import policy_iteration

    mdp = make_env("gridworld", n_agents=2, size=3).mdp if kind == "gridworld" else random_discounted_mdp(gen)
    c = torch.randint(-2, 3, (200, *mdp.shape), generator=gen).double()
    c += 0.01 * torch.rand(c.shape, generator=gen, dtype=torch.float64)
    tol = 1e-2
    sol = policy_iteration(mdp, c, tie_tol=tol, occupancy=False, max_iter=50)
    q = mdp.q_values(c, sol.values)
    best = q.amax(-1)
    chosen = q.gather(-1, sol.policy.unsqueeze(-1)).squeeze(-1)
    assert (chosen >= best - tol * (1 + best.abs())).all()
    torch.testing.assert_close(sol.values, chosen, rtol=1e-10, atol=1e-10)  # exact values of that policy
    exact = torch.as_tensor(solve_lp_highs(mdp, c[:20])[0])
    assert (sol.value[:20] <= exact + 1e-9).all() and (sol.value[:20] >= exact - 2 * tol * (1 + exact.abs()) / (1 - mdp.gamma)).all()


def test_leading_dimensions_are_kept(gen):
    mdp = random_layered_mdp(gen)
    c = torch.randn(2, 3, *mdp.shape, generator=gen, dtype=torch.float64)
    sol = solve_exact(mdp, c)
    assert sol.value.shape == (2, 3) and sol.occupancy.shape == (2, 3, *mdp.shape)
    torch.testing.assert_close(sol.value[1, 2], solve_exact(mdp, c[1, 2:3]).value[0])


def test_occupancy_of_policy_cyclic_matches_acyclic_formula(gen):
    mdp = random_discounted_mdp(gen, S=5, A=2, gamma=0.7)
    pi = torch.randint(0, 2, (3, 5), generator=gen)
    nu = occupancy_of_policy(mdp, pi)
    assert torch.allclose(nu.sum((-2, -1)), torch.full((3,), 1 / 0.3, dtype=torch.float64))


@pytest.mark.parametrize("deterministic", [True, False])
def test_policy_iteration_start_does_not_change_the_solution(gen, deterministic):
    """Any start policy (random, or the mean-reward policy) gives the optimal values and nu."""
    if deterministic:
        mdp = make_env("gridworld", n_agents=2, size=3).mdp
    else:
        mdp = random_discounted_mdp(gen, S=6, A=3, gamma=0.9)
    S, A = mdp.shape
    c = torch.randn(4, 5, S, A, generator=gen, dtype=torch.float64)
    ref = solve_exact(mdp, c)
    starts = [
        torch.randint(0, A, (4, 5, S), generator=gen),  # one start per entry
        torch.randint(0, A, (S,), generator=gen),  # broadcast to every entry
        mean_reward_policy(mdp, c, (1,)),  # [4, 1, S]
    ]
    for start in starts:
        sol = solve_exact(mdp, c, init_policy=start)
        torch.testing.assert_close(sol.values, ref.values, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(sol.occupancy, ref.occupancy, atol=1e-10, rtol=1e-10)
    # value-iteration starts (e.g. a related problem's values): same solution, whatever the start
    for values in (ref.values + 5.0 * torch.rand(4, 5, S, generator=gen, dtype=torch.float64), torch.zeros(S)):
        sol = solve_exact(mdp, c, init_values=values, q=False)
        assert sol.q is None
        torch.testing.assert_close(sol.values, ref.values, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(sol.occupancy, ref.occupancy, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(optimal_values(mdp, c, init_values=values), ref.value, atol=1e-10, rtol=1e-10)


def test_mean_reward_policy(gen):
    env = make_env("gridworld", n_agents=2, size=3)
    c = torch.randn(3, 7, 2, *env.mdp.shape, generator=gen, dtype=torch.float64)
    start = mean_reward_policy(env.mdp, c, (1, -1))
    assert start.shape == (3, 1, 1, env.mdp.num_states)
    assert torch.equal(start[:, 0, 0], solve_exact(env.mdp, c.mean((1, 2))).policy)
    assert mean_reward_policy(make_env("seq_sales").mdp, torch.zeros(2, *make_env("seq_sales").mdp.shape), (0,)) is None
    with pytest.raises(ValueError, match="batch dimensions"):
        mean_reward_policy(env.mdp, c, (3,))


def test_bad_start_policy_is_rejected(gen):
    mdp = make_env("gridworld", n_agents=2, size=3).mdp
    c = torch.randn(2, *mdp.shape, generator=gen, dtype=torch.float64)
    with pytest.raises(TypeError, match="integer tensor"):
        solve_exact(mdp, c, init_policy=torch.zeros(mdp.num_states))
    with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
        solve_exact(mdp, c, init_policy=torch.full((mdp.num_states,), 4))
    with pytest.raises(ValueError, match="does not broadcast"):
        solve_exact(mdp, c, init_policy=torch.zeros(3, mdp.num_states, dtype=torch.long))
    with pytest.raises(TypeError, match="init_values must be a floating-point tensor"):
        solve_exact(mdp, c, init_values=torch.zeros(mdp.num_states, dtype=torch.long))
    with pytest.raises(ValueError, match="init_values of shape .* does not broadcast"):
        solve_exact(mdp, c, init_values=torch.zeros(3, mdp.num_states, dtype=torch.float64))
    with pytest.raises(ValueError, match="init_values contain NaN or inf"):
        solve_exact(mdp, c, init_values=torch.full((mdp.num_states,), math.nan, dtype=torch.float64))


def test_optimal_values_match_the_full_solution(gen):
    """Values without a policy = the values of solve_exact (hence of HiGHS, tested above), for
    stochastic finite-horizon, discounted and the settings' MDPs, leading dimensions kept."""
    mdps = [random_layered_mdp(gen, layers=3, width=3, A=3), random_discounted_mdp(gen, S=5, A=3, gamma=0.8),
            make_env("seq_sales", n_agents=3, size=3).mdp, make_env("scheduling", n_agents=2, size=3).mdp,
            make_env("gridworld", n_agents=2, size=3).mdp]
    for mdp in mdps:
        c = torch.randn(4, 6, *mdp.shape, generator=gen, dtype=torch.float64)
        values = optimal_values(mdp, c)
        assert values.shape == (4, 6)
        torch.testing.assert_close(values, solve_exact(mdp, c).value, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="NaN"):
        optimal_values(mdps[2], torch.full((1, *mdps[2].shape), float("nan"), dtype=torch.float64))


def test_path_start_only_where_every_trajectory_is_one_path(gen):
    """History trees (sales, scheduling) qualify; cyclic, stochastic or unequal-depth MDPs do not."""
    assert make_env("seq_sales", n_agents=3, size=3).mdp.path_start == 0
    assert make_env("scheduling", n_agents=2, size=4).mdp.path_start == 0
    assert make_env("gridworld", n_agents=2, size=3).mdp.path_start is None
    assert random_layered_mdp(gen).path_start is None  # stochastic
    # deterministic, but action 1 of the start ends the episode at once: paths of unequal length
    from dmd_torch.mdp import TabularMDP

    short = TabularMDP.deterministic(["root", "leaf"], [0, 1], torch.tensor([[1, -1], [-1, -1]]))
    assert short.path_start is None
    assert TabularMDP.deterministic(["root", "leaf"], [0, 1], torch.tensor([[1, 1], [-1, -1]])).path_start == 0


@pytest.mark.parametrize("gamma", [1.0, 0.8])
def test_policy_occupancy_path_equals_dense_occupancy(gen, gamma):
    """On history trees the path form gives the same occupancy and inner products as the flow sweep."""
    from dmd_torch.exact import _dense_occupancy, policy_occupancy
    from dmd_torch.mdp import TabularMDP

    base = make_env("seq_sales", n_agents=3, size=3).mdp
    mdp = TabularMDP(base.state_labels, base.action_labels, base.next_states, base.next_probs, base.mu0, gamma)
    S, A = mdp.shape
    policy = torch.randint(0, A, (4, 5, S), generator=gen)
    occ = policy_occupancy(mdp, policy)
    assert occ.path is not None and occ.path.shape == (4, 5, len(mdp.levels))
    dense = _dense_occupancy(mdp, policy.reshape(-1, S)).view(4, 5, S, A)
    torch.testing.assert_close(occ.dense(), dense, rtol=0, atol=0)
    x = torch.randn(5, 2, S, A, generator=gen, dtype=torch.float64)  # broadcasts over the 4, extra dim 2
    expect = (x * dense.unsqueeze(-3)).sum((-2, -1))
    torch.testing.assert_close(occ.inner(x, extra=1), expect, rtol=1e-14, atol=1e-14)
    y = torch.randn(S, A, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(occ.inner(y), (y * dense).sum((-2, -1)), rtol=1e-14, atol=1e-14)


def test_policy_occupancy_dense_inner(gen):
    """Without a path (cyclic MDP) inner products contract the dense occupancy, extra dims included."""
    from dmd_torch.exact import policy_occupancy

    mdp = random_discounted_mdp(gen, S=5, A=3, gamma=0.8)
    policy = torch.randint(0, 3, (6, 5), generator=gen)
    occ = policy_occupancy(mdp, policy)
    assert occ.path is None
    x = torch.randn(6, 4, 5, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(occ.inner(x, extra=1), (x * occ.dense().unsqueeze(1)).sum((-2, -1)))
