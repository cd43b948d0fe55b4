"""Tests of the outer methods (dmd_torch.methods): grid search, zeroth-order, regularized LP, multi-start."""

from __future__ import annotations

import math

import pytest
import torch

from dmd_torch import AMA, make_env
from dmd_torch.config import (
    MultiStartConfig,
    OptimizerConfig,
    RegLPConfig,
    SchedulerConfig,
)
from dmd_torch.envs.gridworld import Gridworld
from dmd_torch.follower import affine_total
from dmd_torch.methods import (
    METHODS,
    GridSearch,
    MultiStart,
    RegularizedLP,
    StepEvent,
    ZerothOrder,
    ZerothOrderFollower,
    make_method,
)
from dmd_torch.methods.base import (
    exact_score,
    free_parameters,
    height_groups,
    initial_mechanism,
    tie_to_heights,
)
from dmd_torch.methods.grid import (
    boost_groups,
    candidates_from_unit,
    free_dimensions,
    local_points,
    score_candidates,
    sobol_candidates,
)
from dmd_torch.methods.zeroth_order import gaussian_smoothing_gradient
from dmd_torch.objective import leader_objective
from dmd_torch.regularized import regularized_occupancy


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest on a shared machine
    yield
    torch.set_num_threads(threads)


def _heldout(setting, num=200, seed=123):
    return setting.sample_types(num, torch.Generator().manual_seed(seed))


SMALL = {
    "sales_sym": lambda: make_env("seq_sales", n_agents=2, size=2),
    "sales_asym": lambda: make_env("seq_sales", n_agents=3, size=2, distribution="asymmetric"),
    "scheduling_asym": lambda: make_env("scheduling", n_agents=2, size=3, distribution="asymmetric"),
    "gridworld": lambda: make_env("gridworld", n_agents=2, size=2),
}


# ------------------------------------------------------------------------------------- grid search
def test_sobol_candidates_ranges_and_frozen_parameters():
    sym = make_env("seq_sales", n_agents=3, size=2)
    lw, b = sobol_candidates(AMA(sym), 64, seed=0)
    assert b.abs().max() <= sym.boost_range and b.abs().max() > 0.8 * sym.boost_range
    assert torch.equal(lw, torch.zeros_like(lw))  # weights are not optimized: stay at w = 1
    lw2, b2 = sobol_candidates(AMA(sym), 64, seed=0)
    assert torch.equal(b, b2)
    assert not torch.equal(b, sobol_candidates(AMA(sym), 64, seed=1)[1])
    asym = make_env("seq_sales", n_agents=3, size=2, distribution="asymmetric")
    lw, _ = sobol_candidates(AMA(asym), 64, seed=0)
    torch.testing.assert_close(lw.exp().sum(-1), torch.ones(64, dtype=torch.float64))
    assert (lw.exp() > 0).all()


@pytest.mark.parametrize("cell", ["sales_asym", "scheduling_asym"])
def test_grid_returns_best_candidate_by_exact_score(cell):
    setting = SMALL[cell]()
    S, A = setting.mdp.shape
    # one candidate per solve, the 100 profiles in chunks of 30 (n + 1 problems per profile for revenue, one for makespan)
    problems = setting.n_agents + 1 if setting.objective.needs_without else 1
    grid = GridSearch(num_points=24, profiles=100, top_k=24, max_batch_elements=30 * problems * S * A)
    ama = AMA(setting)
    events: list[StepEvent] = []
    result = grid.run(ama, heldout=_heldout(setting), seed=5, callback=events.append)
    types = grid.training_profiles(setting, seed=5)
    scores = torch.tensor([AMA(setting, weights=lw.exp(), boosts=b).outcome(types).objective.mean() for _, lw, b in result.top])
    sign = setting.objective.sign
    assert len(result.top) == 24
    assert torch.all(sign * scores[:-1] >= sign * scores[1:] - 1e-12)  # sorted best first
    torch.testing.assert_close(scores, torch.tensor([s for s, _, _ in result.top], dtype=torch.float64))
    torch.testing.assert_close(ama.boosts.detach(), result.top[0][2])
    torch.testing.assert_close(ama.log_weights.detach(), result.top[0][1])
    assert sum(e.advance for e in events) == grid.total_work() == 24
    assert result.heldout == pytest.approx(exact_score(ama, _heldout(setting)))


@pytest.mark.parametrize("cell", ["sales_asym", "scheduling_asym"])
def test_screening_returns_the_best_of_the_centre_and_the_screens_best(cell):
    """Screened on 5 of 100 profiles with top_k = 3: the centre and the 3 best of the 39 others on
    the screen are scored on all 100 (the scores of the unscreened search), and the 3 best of them
    are returned (not the 3 best of all 40: the screen ranks them differently)."""
    setting = SMALL[cell]()
    sign = setting.objective.sign
    everything = GridSearch(num_points=40, profiles=100, top_k=40, refine_rounds=0).run(
        AMA(setting), heldout=_heldout(setting), seed=0).top
    grid = GridSearch(num_points=40, profiles=100, top_k=3, refine_rounds=0, screen_profiles=5, screen_keep=0.02)
    events: list[StepEvent] = []
    result = grid.run(AMA(setting), heldout=_heldout(setting), seed=0, callback=events.append)
    full = torch.tensor([score for score, _, _ in everything], dtype=torch.float64)  # best first
    lw, b = torch.stack([x for _, x, _ in everything]), torch.stack([x for _, _, x in everything])
    head = score_candidates(setting, lw, b, grid.training_profiles(setting, seed=0)[:5], 10**6)
    dim = sum(free_dimensions(AMA(setting), tied=True))
    centre_lw, centre_b = candidates_from_unit(AMA(setting), torch.full((1, dim), 0.5, dtype=torch.float64), tied=True)
    centre = int(torch.nonzero((b == centre_b).flatten(1).all(-1) & (lw == centre_lw).all(-1))[0, 0])
    others = torch.tensor([k for k in range(40) if k != centre])
    kept = torch.cat([torch.tensor([centre]), others[torch.argsort(sign * head[others], descending=True)[:3]]])
    expected = kept[torch.argsort(sign * full[kept], descending=True)[:3]]
    assert expected.tolist() != [0, 1, 2]  # the screen dropped one of the 3 best of all
    torch.testing.assert_close(torch.tensor([x for x, _, _ in result.top], dtype=torch.float64), full[expected],
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.stack([x for _, _, x in result.top]), b[expected])
    assert sum(e.advance for e in events) == 40 and events[-1].objective == pytest.approx(float(full[expected[0]]), abs=1e-12)


@pytest.mark.parametrize("cell", ["sales_asym", "scheduling_asym"])
def test_score_candidates_is_independent_of_batching(cell):
    """Chunked profiles, several candidates per solve, and one solve per candidate agree with outcome()."""
    setting = SMALL[cell]()
    lw, b = sobol_candidates(AMA(setting), 7, seed=3)
    types = setting.sample_types(50, torch.Generator().manual_seed(0))
    S, A = setting.mdp.shape
    per_profile = (setting.n_agents + 1 if setting.objective.needs_without else 1) * S * A  # problems per profile x S x A
    direct = torch.stack([AMA(setting, weights=w.exp(), boosts=bb).outcome(types).objective.mean() for w, bb in zip(lw, b)])
    for elements in (per_profile * 7, per_profile * 50 * 3, per_profile * 50 * 7):  # chunks of 7 profiles; 3 or 7 candidates
        torch.testing.assert_close(score_candidates(setting, lw, b, types, elements), direct, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------- zeroth order
def _regularized_response(alpha):
    return lambda mdp, c: regularized_occupancy(mdp, c, alpha).detach()


def test_gaussian_smoothing_of_regularized_response_matches_autograd():
    """On the smooth (regularized) follower, the zeroth-order estimate matches autograd."""
    setting = make_env("seq_sales", n_agents=2, size=2, distribution="asymmetric")
    gen = torch.Generator().manual_seed(0)
    lw0 = torch.tensor([1.2, 0.8], dtype=torch.float64).log()
    b0 = 0.3 * torch.rand(*setting.mdp.shape, generator=gen, dtype=torch.float64)
    alpha, sigma, J = 0.1, 0.01, 20_000
    r = setting.checked_rewards(setting.sample_types(8, gen))
    n, (S, A) = setting.n_agents, setting.mdp.shape

    def sw(lw, b):  # mean welfare of the regularized response, the part zeroth order smooths
        nu = regularized_occupancy(setting.mdp, affine_total(r, lw.exp().unsqueeze(-2), b.unsqueeze(-3)), alpha)
        return (r.sum(-3) * nu).sum((-3, -2, -1)) / r.shape[0]

    params = (lw0.clone().requires_grad_(), b0.clone().requires_grad_())
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(sw(*params), params)])

    def f(u):
        with torch.no_grad():
            return sw(lw0 + u[:, :n], b0 + u[:, n:].reshape(-1, S, A))

    est, terms = gaussian_smoothing_gradient(f, n + S * A, J, sigma, torch.Generator().manual_seed(1), antithetic=True)
    se = terms.std(0) / math.sqrt(J)
    assert exact.abs().max() > 0.05  # a non-trivial gradient
    assert ((est - exact).abs() <= 4 * se + 2e-3).all(), (est - exact, se)


def test_zeroth_order_gradient_matches_autograd_of_regularized_revenue():
    """Envelope part + smoothed response part == autograd of AMA.forward, on average, on the
    smooth follower: the zeroth-order follower's backward is an unbiased estimate."""
    setting = make_env("seq_sales", n_agents=2, size=2, distribution="asymmetric")
    gen = torch.Generator().manual_seed(2)
    ama = AMA(setting, weights=torch.tensor([0.9, 1.1]), boosts=0.3 * torch.rand(*setting.mdp.shape, generator=gen, dtype=torch.float64))
    types = setting.sample_types(8, gen)
    alpha = 0.1
    objective = ama(types, alpha=alpha).mean()
    auto = torch.cat([g.flatten() for g in torch.autograd.grad(objective, free_parameters(ama))])
    reps, draws = 40, []
    for k in range(reps):
        follower = ZerothOrderFollower(500, 0.01, torch.Generator().manual_seed(10 + k),
                                       occupancy_fn=_regularized_response(alpha), entropy_weight=alpha)
        value = leader_objective(setting, ama.log_weights, ama.boosts, types, follower).mean()
        draws.append(torch.cat([g.flatten() for g in torch.autograd.grad(value, free_parameters(ama))]))
    draws = torch.stack(draws)
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(reps)
    assert float(value.detach()) == pytest.approx(float(objective.detach()), rel=1e-9)
    assert ((mean - auto).abs() <= 4 * se + 2e-3).all(), (mean - auto, se)


@pytest.mark.parametrize("name", ["seq_sales", "scheduling"])
def test_zeroth_order_value_is_the_exact_objective(name):
    """With the exact response the zeroth-order follower's value is the exact objective, for
    revenue (envelope terms and agents' values) and for the makespan (no envelope part)."""
    setting = make_env(name, n_agents=2, size=2, distribution="asymmetric")
    ama = AMA(setting, boosts=torch.rand(setting.mdp.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    types = _heldout(setting, 10)
    follower = ZerothOrderFollower(5, 0.05, torch.Generator().manual_seed(0))
    value = leader_objective(setting, ama.log_weights, ama.boosts, types, follower)
    torch.testing.assert_close(value.detach(), ama.objective(types), rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(value.mean(), free_parameters(ama))
    assert all(torch.isfinite(g).all() for g in grads)


def test_zeroth_order_perturbs_only_free_parameters():
    setting = make_env("seq_sales", n_agents=2, size=2)  # weights frozen
    ama = AMA(setting)
    follower = ZerothOrderFollower(5, 0.05, torch.Generator().manual_seed(0))
    leader_objective(setting, ama.log_weights, ama.boosts, _heldout(setting, 10), follower).mean().backward()
    assert ama.log_weights.grad is None and ama.boosts.grad.shape == ama.boosts.shape
    with pytest.raises(ValueError, match="one parameter vector"):
        leader_objective(setting, ama.log_weights.detach().expand(2, 2), ama.boosts, _heldout(setting, 3), follower)


# ------------------------------------------------------------------------------------- gradient methods
@pytest.mark.parametrize(
    "method",
    [
        RegularizedLP(steps=30, eval_every=10, optimizer={"name": "Adam", "lr": 0.05}, multistart={"starts": 1}),
        ZerothOrder(steps=30, eval_every=10, optimizer={"name": "SGD", "lr": 0.1}),
    ],
    ids=["reg_lp", "zeroth_order"],
)
def test_gradient_methods_improve_on_their_start(method):
    setting = make_env("seq_sales", n_agents=3, size=2)
    held = _heldout(setting, 400)
    ama = AMA(setting)
    events: list[StepEvent] = []
    result = method.run(ama, heldout=held, seed=0, callback=events.append)
    vcg, *trained = result.history  # VCG scored first (keep_vcg), then the start's evaluations
    assert vcg == {"step": 0, "start": -1, "heldout": exact_score(AMA.vcg(setting), held)}
    assert result.steps == 30 and [h["step"] for h in trained] == [0, 10, 20, 30]
    assert result.heldout == max(h["heldout"] for h in result.history)
    assert result.heldout > trained[0]["heldout"] + 0.05 and result.best_start == 0
    assert result.heldout == pytest.approx(exact_score(ama, held))  # ama holds the best parameters
    assert torch.equal(ama.log_weights.detach(), torch.zeros(3, dtype=torch.float64))  # frozen: w = 1
    assert not ama.log_weights.requires_grad and ama.boosts.requires_grad
    assert sum(e.advance for e in events) == method.total_work()
    train = [e for e in events if e.phase == "train"]
    assert len(train) == 30 and all(math.isfinite(e.grad_norm) for e in train)


def test_makespan_is_minimized_and_weights_move_when_free():
    setting = make_env("scheduling", n_agents=2, size=3, distribution="asymmetric")
    held = _heldout(setting, 200)
    ama = AMA(setting)
    result = ZerothOrder(steps=6, eval_every=3, profiles_per_step=10).run(ama, heldout=held, seed=1)
    assert result.heldout == min(h["heldout"] for h in result.history)
    assert ama.log_weights.requires_grad and result.steps == 6


def test_initial_mechanism_is_w1_b_uniform():
    setting = make_env("seq_sales", n_agents=2, size=2, distribution="asymmetric")
    ama = AMA(setting, weights=torch.tensor([2.0, 3.0]))
    initial_mechanism(ama, "uniform", torch.Generator().manual_seed(0))
    assert torch.equal(ama.weights.detach(), torch.ones(2, dtype=torch.float64))
    assert (ama.boosts >= 0).all() and (ama.boosts < 1).all() and ama.boosts.std() > 0.1
    initial_mechanism(ama, "vcg", torch.Generator())
    assert torch.equal(ama.boosts.detach(), torch.zeros_like(ama.boosts))


def test_multistart_from_grid_keeps_best_start():
    setting = make_env("seq_sales", n_agents=2, size=2, distribution="asymmetric")
    held = _heldout(setting, 200)
    method = RegularizedLP(
        steps=4, eval_every=2, multistart={"starts": 3, "grid_points": 16, "grid_profiles": 50},
        scheduler={"name": "StepLR", "kwargs": {"step_size": 2, "gamma": 0.5}},
    )
    ama = AMA(setting)
    result = method.run(ama, heldout=held, seed=0)
    assert {h["start"] for h in result.history} == {-1, 0, 1, 2}  # -1: VCG (keep_vcg)
    assert result.steps == 12 and result.candidates == 16
    best = max(result.history, key=lambda h: h["heldout"])
    assert result.best_start == best["start"] and result.heldout == best["heldout"]
    assert result.heldout == pytest.approx(exact_score(ama, held))
    assert method.total_work() == 16 + 3 * 4


def test_annealed_alpha_reaches_the_forward_pass(monkeypatch):
    """alpha_t runs geometrically from alpha to alpha_final over each start, and each step's
    forward pass gets that step's alpha."""
    method = RegularizedLP(steps=5, eval_every=5, alpha=0.08, alpha_final=0.005, multistart={"starts": 2})
    est = method.estimator
    assert [est.alpha_at(t) for t in (1, 5)] == pytest.approx([0.08, 0.005])
    assert est.alpha_at(3) == pytest.approx(math.sqrt(0.08 * 0.005))
    assert RegularizedLP(alpha=0.03, alpha_final=None).estimator.alpha_at(4) == 0.03  # no alpha_final: constant
    seen: list[float] = []
    forward = AMA.forward

    def spy(self, types, alpha=0.01, **kwargs):
        seen.append(alpha)
        return forward(self, types, alpha=alpha, **kwargs)

    monkeypatch.setattr(AMA, "forward", spy)
    setting = make_env("seq_sales", n_agents=2, size=2)
    method.run(AMA(setting), heldout=_heldout(setting, 50), seed=0)
    expected = [est.alpha_at(t) for t in range(1, 6)]
    assert seen == pytest.approx(expected * 2)


def test_random_multistart_and_cvxpylayers_backend():
    setting = make_env("seq_sales", n_agents=2, size=2)
    held = _heldout(setting, 100)
    method = RegularizedLP(steps=1, eval_every=1, profiles_per_step=2, backend="cvxpylayers", multistart={"starts": 2})
    result = method.run(AMA(setting), heldout=held, seed=0)
    assert result.steps == 2 and {h["start"] for h in result.history} == {-1, 0, 1}


@pytest.mark.parametrize("name, options, vcg_wins", [
    ("gridworld", {"steps": 1, "init": "vcg", "optimizer": {"name": "SGD", "lr": 100.0}}, True),  # one step far off
    ("seq_sales", {"steps": 30}, False),
])
def test_keep_vcg_returns_vcg_where_training_does_not_beat_it(name, options, vcg_wins):
    """With keep_vcg the result is the better of VCG and the trained points on the held-out sample
    (a trained point must beat VCG strictly), the training itself unchanged; where VCG wins, the
    mechanism is VCG."""
    setting = make_env(name, n_agents=3, size=3)
    held = _heldout(setting, 300)
    vcg = exact_score(AMA.vcg(setting), held)
    ama = AMA(setting)
    kept = ZerothOrder(eval_every=options["steps"], **options).run(ama, heldout=held, seed=0)
    plain = ZerothOrder(eval_every=options["steps"], keep_vcg=False, **options).run(AMA(setting), heldout=held, seed=0)
    assert kept.history == [{"step": 0, "start": -1, "heldout": vcg}, *plain.history]
    assert kept.heldout == max(vcg, plain.heldout) and (kept.best_start == -1) == vcg_wins
    assert kept.heldout == pytest.approx(exact_score(ama, held))
    if vcg_wins:
        assert not ama.boosts.detach().any()


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("reg_lp", {"optimizer": {"name": "SGD", "lr": -0.1}}, "lr"),
        ("reg_lp", {"alpha": -0.01}, "alpha"),
        ("reg_lp", {"alpha": 0}, "alpha"),
        ("reg_lp", {"alpha_final": -0.001}, "alpha_final"),
        ("reg_lp", {"profiles_per_step": 0}, "profiles_per_step"),
        ("reg_lp", {"backend": "mosek"}, "allowed: auto, tree, newton, cvxpylayers"),
        ("reg_lp", {"optimizer": {"name": "Adamm"}}, "allowed: .*Adam"),
        ("reg_lp", {"optimizer": {"name": "LBFGS"}}, "unknown optimizer 'LBFGS'; allowed: "),
        ("reg_lp", {"optimizer": {"name": "SparseAdam"}}, "unknown optimizer 'SparseAdam'"),
        ("reg_lp", {"steps": "many"}, "could not be converted to Integer.*steps"),
        ("reg_lp", {"alpha_final": True}, "alpha_final"),
        ("zeroth_order", {"antithetic": "maybe"}, "not a valid bool.*antithetic"),
        ("grid", {"steps": 10}, "unknown key 'steps' for GridConfig; allowed: name, variant, num_points"),
        ("reg_lp", {"optimizer": {"name": "SGD", "kwargs": {"betas": [0.9, 0.9]}}}, "optimizer SGD"),
        ("reg_lp", {"scheduler": {"name": "Nope"}}, "lr scheduler"),
        ("reg_lp", {"init": "zeros"}, "allowed: uniform, vcg"),
        ("reg_lp", {"stepz": 3}, "unknown key 'stepz' for RegLPConfig; allowed: name, variant, steps"),
        ("reg_lp", {"multistart": {"starts": 0}}, "starts"),
        ("zeroth_order", {"sigma": 0.0}, "sigma"),
        ("zeroth_order", {"num_perturbations": 0}, "num_perturbations"),
        ("grid", {"profiles": 0}, "profiles"),
        ("grid", {"num_points": -5}, "num_points"),
        ("sgd", {}, "allowed: grid, zeroth_order, reg_lp"),
    ],
)
def test_bad_input_raises_one_line_value_error(name, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        make_method(name, **kwargs)
    assert "\n" not in str(info.value)


def test_tree_backend_on_gridworld_is_rejected_before_work():
    setting = make_env("gridworld", n_agents=2, size=2)
    method = RegularizedLP(backend="tree")
    with pytest.raises(ValueError, match="backend 'tree' does not apply here.*allowed here: auto, newton, cvxpylayers"):
        method.check_setting(setting)
    with pytest.raises(ValueError, match="backend 'newton' takes no option.* bogus; allowed: tol, max_iter"):
        RegularizedLP(backend="newton", solver_options={"bogus": 1}).check_setting(setting)
    with pytest.raises(ValueError, match="tree"):
        method.run(AMA(setting), heldout=_heldout(setting, 10), callback=lambda e: pytest.fail("work started"))


def test_a_search_space_wider_than_sobols_is_refused_before_work():
    """Sales with 7 buyers and 5 items has 4,681 x 8 boosts: more coordinates than SobolEngine
    draws; grid search, and a gradient method that starts from one, refuse it in one line."""
    setting = make_env("seq_sales", n_agents=7, size=5)
    for method in (make_method("grid"), make_method("reg_lp", multistart={"grid_points": 10})):
        with pytest.raises(ValueError, match=r"^grid search on seq_sales .* has 37,4\d\d coordinates; .* at most 21,201") as info:
            method.check_setting(setting)
        assert "\n" not in str(info.value)
    make_method("reg_lp").check_setting(setting)  # random starts: no Sobol points


def test_registry_and_configs():
    """make_method and the method classes build from the same config dataclasses as the app."""
    assert set(METHODS) == {"grid", "zeroth_order", "reg_lp"}
    assert isinstance(RegularizedLP().config.optimizer, OptimizerConfig)
    assert make_method("reg_lp").config == RegLPConfig() == RegularizedLP().config
    assert make_method(RegLPConfig(steps=7)).config.steps == 7
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert SchedulerConfig().build(opt, 10) is None
    assert SchedulerConfig("CosineAnnealingLR").build(opt, 123).T_max == 123  # length defaults to the steps
    assert SchedulerConfig("CosineAnnealingLR", {"T_max": 7}).build(opt, 123).T_max == 7
    assert MultiStart(MultiStartConfig()).grid is None
    assert ZerothOrder().config.num_perturbations == 20 and ZerothOrder().config.sigma == 0.05
    assert (RegularizedLP().config.alpha, RegularizedLP().config.alpha_final) == (0.05, 0.02)


def test_paper_variants_hold_the_papers_hyperparameters():
    """method=<name>_paper is the paper's section 5; the defaults are this library's best known."""
    paper = make_method("reg_lp_paper").config
    assert (paper.name, paper.variant, paper.alpha, paper.alpha_final) == ("reg_lp", "reg_lp_paper", 0.01, None)
    assert (paper.optimizer.name, paper.optimizer.lr, paper.profiles_per_step) == ("Adam", 0.01, 20)
    assert paper.scheduler.name is None and paper.tied is False  # a constant step size; a boost per (state, action)
    zo = make_method("zeroth_order_paper").config
    assert (zo.num_perturbations, zo.sigma, zo.optimizer.name, zo.optimizer.lr) == (20, 0.05, "SGD", 0.1)
    assert zo.scheduler.name is None and zo.tied is False
    grid = make_method("grid_paper", num_points=7).config
    assert (grid.scramble, grid.tied, grid.refine_rounds, grid.num_points) == (False, False, 0, 7)
    assert isinstance(make_method("grid_paper"), GridSearch) and make_method("grid").config.refine_rounds > 0
    with pytest.raises(ValueError, match="unknown method 'reg_lp_tuned'; allowed: grid, zeroth_order, reg_lp, grid_paper"):
        make_method("reg_lp_tuned")


@pytest.mark.parametrize("variant", ["grid", "grid_paper"])
def test_grid_starts_at_vcg_and_never_loses_to_it_on_its_profiles(variant):
    """The first candidate is the centre of the box (zero boosts, equal weights: VCG), as in the
    authors' unscrambled sequence, so the best training score is at least VCG's."""
    setting = SMALL["sales_asym"]()
    held = _heldout(setting, 50)
    one = make_method(variant, num_points=1, profiles=64, refine_rounds=0)
    ama = AMA(setting)
    one.run(ama, heldout=held, seed=0)
    vcg = AMA.vcg(setting)
    torch.testing.assert_close(ama.boosts, vcg.boosts, rtol=0, atol=0)
    torch.testing.assert_close(ama.weights, torch.full_like(ama.weights, 1 / setting.n_agents), rtol=1e-12, atol=1e-12)
    method = make_method(variant, num_points=200, profiles=64)
    types = method.training_profiles(setting, 0)
    result = method.run(AMA(setting), heldout=held, seed=0)
    vcg_score = float(leader_objective(setting, vcg.log_weights, vcg.boosts, types).mean())
    assert result.top[0][0] >= vcg_score - 1e-12


def test_grid_local_rounds_and_tied_boosts():
    """Local points move a random set of coordinates within the half-width; tied coordinates are
    one per (height, action) and add to the per-(state, action) ones."""
    centre = torch.full((30,), 0.5, dtype=torch.float64)
    u = local_points(centre, 500, 0.1, seed=3)
    moved = (u - centre).abs() > 0
    assert ((u - centre).abs() <= 0.1 + 1e-15).all() and moved.any(-1).all()
    assert moved.sum(-1).min() == 1 and moved.sum(-1).max() > 15  # from one coordinate to most
    setting = make_env("seq_sales", n_agents=3, size=2)
    S, A = setting.mdp.shape
    tied, full = boost_groups(setting, tied=True)
    assert int(tied.max()) + 1 == 2 * A and torch.equal(full, torch.arange(S * A))
    ama = AMA(setting)
    assert free_dimensions(ama, tied=True) == (2 * A + S * A, 0)
    u = torch.full((1, 2 * A + S * A), 0.5, dtype=torch.float64)
    u[0, 0] = 1.0  # the tied coordinate of (height 0, action 0): every last-step state's action 0
    _, b = candidates_from_unit(ama, u, tied=True)
    heights = setting.mdp.heights
    high = float(setting.search_box()[1][0, 0])
    assert torch.equal(b[0, heights == 0, 0], torch.full_like(b[0, heights == 0, 0], high))
    assert b[0].abs().sum() == high * int((heights == 0).sum())
    assert make_method("grid").config.rounds() == [5000, 1250, 1250, 1250, 1250]
    assert make_method("grid_paper").config.rounds() == [10_000]
    gridworld = make_env("gridworld", n_agents=2, size=3)  # cyclic: no heights, one coordinate per (s, a)
    assert len(boost_groups(gridworld, tied=True)) == 1


def test_tie_to_heights_is_the_projection_onto_boosts_by_height():
    """Idempotent, constant on each (height, action) group, and orthogonal: the residual is
    orthogonal to every tied boost table."""
    setting = make_env("seq_sales", n_agents=3, size=3)
    groups = height_groups(setting)
    heights, A = setting.mdp.heights, setting.mdp.num_actions
    assert groups is not None and int(groups.max()) + 1 == 3 * A
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.randn(setting.mdp.shape, generator=gen, dtype=torch.float64) for _ in range(2))
    px, py = tie_to_heights(x, groups), tie_to_heights(y, groups)
    torch.testing.assert_close(tie_to_heights(px, groups), px, rtol=0, atol=1e-15)
    for h in range(3):
        rows = px[heights == h]
        assert torch.equal(rows, rows[:1].expand_as(rows))
        torch.testing.assert_close(rows[0], x[heights == h].mean(0), rtol=0, atol=1e-15)
    assert abs(float(((x - px) * py).sum())) < 1e-12
    assert height_groups(make_env("gridworld", n_agents=2, size=3)) is None


def test_sales_optimum_lies_in_the_tied_family():
    """Sequential sales claims ``boosts_by_height``: Myerson's boosts are tied by height."""
    for dist in ("symmetric", "asymmetric"):
        setting = make_env("seq_sales", n_agents=3, size=3, distribution=dist)
        assert setting.boosts_by_height
        _, b = setting.known_optimum()
        torch.testing.assert_close(tie_to_heights(b, height_groups(setting)), b, rtol=0, atol=1e-15)
    assert not make_env("scheduling", n_agents=2, size=3).boosts_by_height


@pytest.mark.parametrize("name", ["reg_lp", "zeroth_order"])
def test_gradient_methods_tie_boosts_where_the_setting_says(name):
    """With ``tied=null`` on sales every start and every step keeps the boosts tied by height;
    ``tied=false`` and the paper variants move each (state, action) boost on its own."""
    setting = make_env("seq_sales", n_agents=3, size=3, distribution="asymmetric")
    heights = setting.mdp.heights
    starts = {}

    def spread(ama):
        b = ama.boosts.detach()
        return max(float((b[heights == h] - b[heights == h][:1]).abs().max()) for h in range(3))

    def watch(event):  # the first evaluation of each start is at its starting point
        if event.phase == "eval" and event.start not in starts:
            starts[event.start] = spread(event.ama)

    for variant, overrides, tied in ((name, {"tied": None}, True), (name, {"tied": False}, False),
                                     (f"{name}_paper", {}, False)):
        starts.clear()
        method = make_method(variant, steps=6, eval_every=3, **overrides)
        ama = AMA(setting)
        method.run(ama, heldout=_heldout(setting), seed=0, callback=watch)
        assert len(starts) == method.config.multistart.starts
        if tied:
            assert max(starts.values()) == 0.0 and spread(ama) == 0.0
        else:
            assert min(starts.values()) > 0.0 and spread(ama) > 0.0
    # a setting that claims tied optima on an MDP with cycles is refused, not silently untied
    class ClaimingGridworld(Gridworld):
        boosts_by_height = True

    gridworld = ClaimingGridworld(n_agents=2, size=2)
    with pytest.raises(ValueError, match="declares boosts_by_height, but its MDP has cycles"):
        make_method(name, tied=None).check_setting(gridworld)
    make_method(name, tied=False).check_setting(gridworld)
    # the defaults: the setting's knowledge for the regularized LP, untied for zeroth order
    assert make_method("reg_lp").config.tied is None and make_method("zeroth_order").config.tied is False


def test_score_candidates_rejects_nan_candidates():
    setting = SMALL["sales_asym"]()
    lw, b = sobol_candidates(AMA(setting), 3, seed=0)
    b[1, 0, 0] = math.nan
    types = setting.sample_types(5, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="grid boosts contains NaN or inf"):
        score_candidates(setting, lw, b, types, 10_000)
