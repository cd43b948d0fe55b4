import pytest
import torch

from dmd_torch import AMA, make_env
from dmd_torch.exact import solve_exact


def test_vcg_single_item_is_second_price(gen):
    env = make_env("seq_sales", n_agents=3, size=1)
    types = env.sample_types(50, gen)
    out = AMA.vcg(env).outcome(types)
    v = types[:, :, 0]
    torch.testing.assert_close(out.revenue, v.sort(-1).values[:, -2])
    torch.testing.assert_close(out.welfare, v.max(-1).values)
    winner = v.argmax(-1)
    torch.testing.assert_close(out.payments.gather(-1, winner[:, None]).squeeze(-1), out.revenue)


def test_myerson_single_bidder_posts_reserve_price(gen):
    env = make_env("seq_sales", n_agents=1, size=1)
    types = env.sample_types(200, gen)
    out = AMA.known_optimum(env).outcome(types)
    v = types[:, 0, 0]
    torch.testing.assert_close(out.revenue, torch.where(v > 0.5, 0.5, 0.0).to(v))


def test_payments_match_definition(gen):
    env = make_env("gridworld", n_agents=3, size=3)
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    b = torch.randn(env.mdp.shape, generator=gen, dtype=torch.float64)
    ama = AMA(env, weights=w, boosts=b)
    types = env.sample_types(7, gen)
    out = ama.outcome(types)
    r = env.rewards(types)
    for i in range(3):
        c_minus = (w[:, None, None] * r).sum(1) - w[i] * r[:, i] + b
        asw_minus = solve_exact(env.mdp, c_minus).value
        others = ((w[:, None, None] * r).sum(1) - w[i] * r[:, i] + b) * out.occupancy
        expect = (asw_minus - others.sum((-2, -1))) / w[i]
        torch.testing.assert_close(out.payments[:, i], expect)
    torch.testing.assert_close(out.revenue, out.welfare + ((out.asw_without - out.asw[:, None]) / w).sum(-1))


def test_frozen_parameters_follow_setting():
    sym, asym = make_env("seq_sales"), make_env("seq_sales", distribution="asymmetric")
    assert not AMA(sym).log_weights.requires_grad and AMA(sym).boosts.requires_grad
    assert AMA(asym).log_weights.requires_grad


def test_makespan_outcome(gen):
    from dmd_torch.exact import policy_occupancy

    env = make_env("scheduling", n_agents=2, size=3)
    types = env.sample_types(10, gen)
    out = AMA.vcg(env).outcome(types)
    assert (out.objective >= 0).all() and not torch.equal(out.objective, out.revenue)
    torch.testing.assert_close(out.objective, env.policy_loss(types, policy_occupancy(env.mdp, out.policy)), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weights=torch.tensor([1.0, 0.0])), "weights must be finite and > 0"),
        (dict(weights=torch.tensor([1.0, -2.0])), "weights must be finite and > 0"),
        (dict(weights=torch.tensor([1.0, float("nan")])), "weights must be finite"),
        (dict(weights=torch.ones(3)), r"weights must have shape \[n\] = \[2\]"),
        (dict(boosts=torch.zeros(2, 2)), r"boosts must have shape \[S, A\] = \[4, 3\]"),
        (dict(boosts=torch.full((4, 3), float("inf"))), "boosts contain NaN or inf"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AMA(make_env("seq_sales", n_agents=2, size=2), **kwargs)


def test_nan_parameters_after_update_are_caught(gen):
    env = make_env("seq_sales", n_agents=2, size=2)
    ama = AMA(env)
    with torch.no_grad():
        ama.boosts[0, 0] = float("nan")
    with pytest.raises(ValueError, match="boosts contains NaN or inf"):
        ama.outcome(env.sample_types(3, gen))


def test_nan_types_rejected():
    env = make_env("seq_sales", n_agents=2, size=2)
    with pytest.raises(ValueError, match="types contain NaN or inf"):
        AMA(env).outcome(torch.tensor([[[0.5], [float("nan")]]], dtype=torch.float64))


CELLS = [("seq_sales", 2, 2, "asymmetric"), ("scheduling", 2, 3, "asymmetric"), ("gridworld", 2, 3, "one_cell")]


def _random_ama(env, gen):
    return AMA(
        env,
        weights=0.5 + torch.rand(env.n_agents, generator=gen, dtype=torch.float64),
        boosts=torch.rand(env.mdp.shape, generator=gen, dtype=torch.float64),
    )


@pytest.mark.parametrize("name, n, m, dist", CELLS)
def test_regularized_objective_converges_to_exact(gen, name, n, m, dist):
    """Theorem 4.3: the regularized objective tends to the exact one as alpha -> 0."""
    env = make_env(name, n_agents=n, size=m, distribution=dist)
    ama = _random_ama(env, gen)
    types = env.sample_types(200, gen)
    exact = ama.outcome(types).objective.mean()
    with torch.no_grad():
        gaps = [float((ama(types, alpha=a).mean() - exact).abs()) for a in (1.0, 0.1, 0.01, 0.001)]
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 0.02 * max(1.0, float(exact.abs()))


@pytest.mark.parametrize("name, n, m, dist", CELLS)
def test_regularized_objective_gradient_matches_finite_differences(gen, name, n, m, dist):
    env = make_env(name, n_agents=n, size=m, distribution=dist)
    ama = _random_ama(env, gen)
    for p in ama.parameters():
        p.requires_grad_(True)
    types = env.sample_types(5, gen)
    alpha = 0.1
    ama(types, alpha=alpha).sum().backward()
    h = 1e-5
    for p in (ama.log_weights, ama.boosts):
        flat = p.data.view(-1)
        for k in torch.randperm(flat.numel(), generator=gen)[:4].tolist():
            old = flat[k].item()
            with torch.no_grad():
                flat[k] = old + h
                up = ama(types, alpha=alpha).sum().item()
                flat[k] = old - h
                down = ama(types, alpha=alpha).sum().item()
                flat[k] = old
            fd = (up - down) / (2 * h)
            assert p.grad.view(-1)[k].item() == pytest.approx(fd, rel=1e-4, abs=1e-7)


def test_forward_rejects_bad_alpha(gen):
    env = make_env("seq_sales", n_agents=2, size=2)
    for alpha in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
            AMA(env)(env.sample_types(2, gen), alpha=alpha)


@pytest.mark.parametrize("name", ["scheduling", "seq_sales", "gridworld"])
def test_objective_equals_outcome(gen, name):
    """AMA.objective (the loss without the payments' solves) = the full outcome's objective."""
    env = make_env(name, n_agents=3, size=3, distribution="asymmetric" if name != "gridworld" else "one_cell")
    ama = AMA(env, weights=torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64),
              boosts=torch.randn(env.mdp.shape, generator=gen, dtype=torch.float64))
    types = env.sample_types(25, gen)
    torch.testing.assert_close(ama.objective(types), ama.outcome(types).objective, rtol=0, atol=0)
