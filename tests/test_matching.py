"""Dynamic matching (dmd_torch.envs.matching): the MDP against an independent transition rule, the
exact solver against HiGHS, the IC audit, mechanism files and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dmd_torch import AMA, evaluate, ic_audit, load_mechanism, make_env, save_mechanism, solve_exact, solve_lp_highs


def _probability(prev: tuple, action: int, state: tuple, m: int) -> float:
    """The transition rule, written state by state from the definition (not from the class)."""
    if prev[0] + 1 != state[0] or state[0] >= m:
        return 0.0
    waiting = sum(x == -2 for x in prev[1:])
    arrivals = 0
    for i in range(1, len(prev)):
        before, after = prev[i], state[i]
        if before == -2:
            if after == -1 or (after >= 0 and after != state[0]):
                return 0.0
            arrivals += after >= 0
        elif before == -1 and after != -1:
            return 0.0
        elif before >= 0:
            if after == -1:
                if action != i:
                    return 0.0
            elif after != before or action == i:
                return 0.0
    return 0.0 if arrivals > 1 else 1.0 / (waiting + 1)


@pytest.mark.parametrize("n, m", [(2, 2), (3, 3), (2, 4)])
def test_states_and_transitions(n, m):
    env = make_env("matching", n_agents=n, size=m)
    labels = env.mdp.state_labels
    assert labels[0] == (-1,) + (-2,) * n and env.mdp.mu0[0] == 1.0 and env.mdp.action_labels == list(range(n + 1))
    assert {s[0] for s in labels} == set(range(-1, m)) and env.mdp.is_acyclic
    P = env.mdp.dense_transitions()  # [S, A, S]
    for s, prev in enumerate(labels):
        for a in range(n + 1):
            want = torch.tensor([_probability(prev, a, nxt, m) for nxt in labels], dtype=torch.float64)
            torch.testing.assert_close(P[s, a], want, rtol=0, atol=1e-15)
            assert P[s, a].sum() == pytest.approx(0.0 if prev[0] == m - 1 else 1.0)
    reached = torch.zeros(len(labels), dtype=torch.bool)  # every state is reachable from the start
    reached[0] = True
    for _ in range(m + 1):
        reached |= (P[reached] > 0).any(0).any(0)
    assert reached.all()


def test_rewards_follow_arrival_and_patience():
    env = make_env("matching", n_agents=2, size=4)
    types = torch.tensor([[[0.7, 1.0], [0.4, 5.0]]], dtype=torch.float64)
    r = env.checked_rewards(types)
    for s, (rnd, s1, s2) in enumerate(env.mdp.state_labels):
        expect1 = 0.7 if s1 >= 0 and rnd - s1 <= 1 else 0.0
        expect2 = 0.4 if s2 >= 0 and rnd - s2 <= 5 else 0.0
        assert (r[0, 0, s, 1].item(), r[0, 1, s, 2].item()) == pytest.approx((expect1, expect2))
        assert r[0, 0, s, [0, 2]].abs().sum() == 0 and r[0, 1, s, [0, 1]].abs().sum() == 0
    draws = make_env("matching", n_agents=3, size=2, distribution="asymmetric").sample_types(20000)
    assert set(draws[..., 1].unique().tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert (draws[..., 0].amax(0) <= torch.tensor([1.0, 1 / 2, 1 / 3], dtype=torch.float64)).all()


@pytest.mark.parametrize("n, m, dist", [(2, 3, "uniform"), (3, 3, "asymmetric"), (3, 4, "uniform")])
def test_exact_solver_equals_highs(gen, n, m, dist):
    env = make_env("matching", n_agents=n, size=m, distribution=dist)
    r = env.checked_rewards(env.sample_types(6, gen))
    c = r.sum(1) + 0.3 * torch.randn(env.mdp.shape, generator=gen, dtype=torch.float64)
    values, _ = solve_lp_highs(env.mdp, c)
    torch.testing.assert_close(solve_exact(env.mdp, c).value, torch.as_tensor(values), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dist", ["uniform", "asymmetric"])
def test_random_amas_are_strategyproof(gen, dist):
    env = make_env("matching", n_agents=3, size=3, distribution=dist)
    for _ in range(2):
        ama = AMA(env, weights=0.3 + torch.rand(3, generator=gen, dtype=torch.float64),
                  boosts=torch.randn(env.mdp.shape, generator=gen, dtype=torch.float64) / 2)
        audit = ic_audit(ama, env.sample_types(40, gen))
        assert audit.misreports >= 1000 and audit.max_ic_gain <= 1e-7 and audit.min_truthful_utility >= -1e-9


def test_vcg_leaves_revenue_that_a_reserve_collects():
    """One arrival and one match per round: nobody blocks anybody, so VCG charges nothing, while a
    boost against every match (a posted reserve) earns revenue."""
    env = make_env("matching", n_agents=2, size=3)
    reserve = torch.zeros(env.mdp.shape, dtype=torch.float64)
    reserve[:, 1:] = -0.5
    result = evaluate(AMA(env, boosts=reserve), profiles=4000)
    assert abs(result.vcg_mean) < 1e-12 and result.mean > 0.2


def test_mechanism_file_labels_are_the_state_tuples(tmp_path, gen):
    env = make_env("matching", n_agents=2, size=3, distribution="asymmetric")
    ama = AMA(env, weights=torch.tensor([1.5, 0.5]), boosts=torch.randn(env.mdp.shape, generator=gen, dtype=torch.float64))
    data = json.loads(save_mechanism(ama, tmp_path)[0].read_text())
    assert data["states"][0] == [-1, -2, -2] and data["actions"] == [0, 1, 2]
    back = load_mechanism(tmp_path / "mechanism.json")
    torch.testing.assert_close(back.boosts, ama.boosts)
    torch.testing.assert_close(back.weights, ama.weights)


@pytest.mark.parametrize(
    "options, match",
    [({"distribution": "normal"}, "unknown distribution 'normal' for matching; allowed: uniform, asymmetric"),
     ({"gamma": 0.0}, r"gamma must lie in \(0, 1\]"), ({"n_agents": 0}, "n_agents must be an integer >= 1"),
     ({"size": 0}, "matching size must be an integer >= 1"), ({"patience": 3}, "unknown option.* patience for matching")],
)
def test_bad_input(options, match):
    with pytest.raises(ValueError, match=match) as info:
        make_env("matching", **options)
    assert "\n" not in str(info.value) and not math.isnan(0.0)


@pytest.mark.parametrize("name", ["grid", "zeroth_order", "reg_lp"])
def test_every_method_runs_and_beats_vcg(name):
    """All three methods work on matching (the authors' code runs only the regularized LP there)."""
    from dmd_torch.methods import make_method

    env = make_env("matching", n_agents=2, size=2, distribution="asymmetric")
    budget = {"grid": {"num_points": 64, "profiles": 200}}.get(name, {"steps": 30, "eval_every": 10, "multistart": {"starts": 1}})
    held = env.sample_types(300, torch.Generator().manual_seed(1))
    result = make_method(name, **budget).run(AMA(env), heldout=held)
    assert result.heldout > 0.02 > AMA.vcg(env).objective(held).mean().abs()
