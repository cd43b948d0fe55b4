"""Static auctions (dmd_torch.envs.static): the one-state MDP, the known optima against their closed
forms, the exact solver against HiGHS, the IC audit, mechanism files and the size guard."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dmd_torch import AMA, evaluate, ic_audit, load_mechanism, make_env, save_mechanism, solve_exact, solve_lp_highs


def test_one_state_and_allocation_actions():
    env = make_env("static_auction", n_agents=2, size=2)
    assert env.mdp.state_labels == [()] and env.mdp.shape == (1, 9) and env.mdp.action_labels[5] == (1, 2)
    types = torch.tensor([[[0.2, 0.7], [0.5, 0.1]]], dtype=torch.float64)
    add = env.checked_rewards(types)[0, :, 0]  # [n, A]
    ud = make_env("static_auction", n_agents=2, size=2, valuation="unit_demand").checked_rewards(types)[0, :, 0]
    for a, (j1, j2) in enumerate(env.mdp.action_labels):
        for i in (1, 2):
            got = [types[0, i - 1, k].item() for k, j in enumerate((j1, j2)) if j == i]
            assert add[i - 1, a].item() == pytest.approx(sum(got))
            assert ud[i - 1, a].item() == pytest.approx(max(got, default=0.0))


def myerson(n: int) -> float:
    """Revenue of the second-price auction with reserve 1/2 for n U[0, 1] bidders: the expected
    positive virtual value of the highest, int_{1/2}^1 (2v - 1) n v^(n-1) dv."""
    return (2 * n / (n + 1) - 1) - (2 * n / (n + 1) / 2 ** (n + 1) - 1 / 2**n)


@pytest.mark.parametrize(
    "n, m, valuation, revenue",
    [(2, 1, "additive", 5 / 12), (3, 1, "additive", myerson(3)), (5, 1, "additive", myerson(5)),
     (1, 2, "additive", (12 + 2 * math.sqrt(2)) / 27), (1, 2, "unit_demand", 2 / (3 * math.sqrt(3)))],
)
def test_known_optima_reach_their_closed_forms(n, m, valuation, revenue):
    env = make_env("static_auction", n_agents=n, size=m, valuation=valuation)
    result = evaluate(AMA.known_optimum(env), profiles=200_000, seed=3)
    assert abs(result.mean - revenue) <= 4 * result.stderr, (result.mean, revenue)


def test_myerson_revenue_formula():
    """The closed form against quadrature of the winner's virtual value, and n = 2: 5/12."""
    assert myerson(2) == pytest.approx(5 / 12) and myerson(3) == pytest.approx(0.53125)
    grid = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    for n in (2, 3, 5):
        integrand = (2 * grid - 1).clamp(min=0) * n * grid ** (n - 1)
        assert torch.trapezoid(integrand, grid).item() == pytest.approx(myerson(n), abs=1e-8)
    assert make_env("static_auction", n_agents=2, size=2).known_optimum() is None


def test_one_bidder_ama_is_a_menu_of_prices(gen):
    """A single bidder buys the bundle maximizing v(a) + b(a) and pays b(nothing) - b(a)."""
    env = make_env("static_auction", n_agents=1, size=2)
    ama = AMA.known_optimum(env)
    out = ama.outcome(env.sample_types(500, gen))
    price = -ama.boosts.detach()[0]
    torch.testing.assert_close(out.payments[:, 0], price[out.policy[:, 0]])


@pytest.mark.parametrize("n, m, valuation", [(2, 2, "additive"), (3, 2, "unit_demand"), (2, 3, "additive")])
def test_exact_solver_equals_highs_and_amas_are_strategyproof(gen, n, m, valuation):
    env = make_env("static_auction", n_agents=n, size=m, valuation=valuation)
    r = env.checked_rewards(env.sample_types(5, gen))
    c = r.sum(1) + 0.3 * torch.randn(env.mdp.shape, generator=gen, dtype=torch.float64)
    values, _ = solve_lp_highs(env.mdp, c)
    torch.testing.assert_close(solve_exact(env.mdp, c).value, torch.as_tensor(values), rtol=1e-9, atol=1e-9)
    ama = AMA(env, weights=0.5 + torch.rand(n, generator=gen, dtype=torch.float64),
              boosts=0.5 * torch.randn(env.mdp.shape, generator=gen, dtype=torch.float64))
    audit = ic_audit(ama, env.sample_types(40, gen))
    assert audit.max_ic_gain <= 1e-7 and audit.min_truthful_utility >= -1e-9


def test_mechanism_file_labels_are_allocations(tmp_path, gen):
    env = make_env("static_auction", n_agents=2, size=2, valuation="unit_demand")
    ama = AMA(env, boosts=torch.randn(env.mdp.shape, generator=gen, dtype=torch.float64))
    data = json.loads(save_mechanism(ama, tmp_path)[0].read_text())
    assert data["states"] == [[]] and data["actions"][5] == [1, 2] and data["env"]["valuation"] == "unit_demand"
    torch.testing.assert_close(load_mechanism(tmp_path).boosts, ama.boosts)


@pytest.mark.parametrize(
    "options, match",
    [({"valuation": "xor"}, "unknown valuation 'xor' for static_auction; allowed: additive, unit_demand"),
     ({"n_agents": 3, "size": 11}, r"3 bidders and 11 items has \(n\+1\)\^m = 4194304 allocations, too many .* allowed: \(n\+1\)\^m <= 1048576"),
     ({"distribution": "normal"}, "unknown distribution 'normal' for static_auction; allowed: uniform")],
)
def test_bad_input(options, match):
    with pytest.raises(ValueError, match=match) as info:
        make_env("static_auction", **options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["grid", "zeroth_order", "reg_lp"])
def test_every_method_runs_and_nears_myerson(name):
    from dmd_torch.methods import make_method

    env = make_env("static_auction", n_agents=2, size=1)
    budget = {"grid": {"num_points": 256, "profiles": 500}}.get(name, {"steps": 200, "eval_every": 50, "multistart": {"starts": 1}})
    held = env.sample_types(2000, torch.Generator().manual_seed(1))
    result = make_method(name, **budget).run(AMA(env), heldout=held)
    optimum = float(AMA.known_optimum(env).objective(held).mean())
    assert result.heldout >= 0.9 * optimum and result.heldout > float(AMA.vcg(env).objective(held).mean())
