"""Tests of dmd_torch.cost: sizes known before building, refusal of what cannot fit, the estimate."""

from __future__ import annotations

import pytest

from dmd_torch import make_env
from dmd_torch.cost import CostEstimate, check_fits, cost_model, elements, estimate
from dmd_torch.envs import ENVS
from dmd_torch.methods import make_method

SIZES = {
    "seq_sales": [(2, 2), (3, 4), (5, 3)],
    "scheduling": [(2, 4), (3, 5), (4, 3)],
    "gridworld": [(2, 3), (5, 8)],
    "static_auction": [(1, 2), (3, 2), (2, 5)],
}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_shape_of_is_the_built_mdps_shape(name):
    """What create() checks before building is the shape the constructor builds."""
    for n, m in SIZES[name]:
        setting = make_env(name, n_agents=n, size=m)
        assert ENVS[name].shape_of(**setting.config()) == setting.mdp.shape, (name, n, m)


def test_matching_is_checked_after_building():
    assert ENVS["matching"].shape_of(n_agents=2, size=3) is None
    assert make_env("matching", n_agents=2, size=3).mdp.num_states > 0


@pytest.mark.parametrize(("name", "n", "m"), [("seq_sales", 50, 5), ("scheduling", 20, 8), ("gridworld", 5, 10_000)])
def test_sizes_past_memory_are_refused_before_the_mdp_is_built(name, n, m):
    # the sales MDP alone would hold 6.9M states x 51 actions; refused from the sizes, in one line
    with pytest.raises(ValueError, match=rf"^{name} with n_agents={n}, size={m:d} has [\d,]+ states x [\d,]+ actions: "
                                         r"estimated memory [\d.]+ GiB for one profile exceeds"):
        make_env(name, n_agents=n, size=m)


def test_check_fits_against_a_given_memory():
    S, A = 43, 6
    check_fits("seq_sales", 5, 3, S, A, memory=2**30)
    with pytest.raises(ValueError, match="exceeds the 0.0 GiB available"):
        check_fits("seq_sales", 5, 3, S, A, memory=1000)


def test_estimate_follows_the_model():
    """The estimate is the model's formula: linear in the grid's candidates and in the steps."""
    setting = make_env("seq_sales", n_agents=4, size=3)
    model = cost_model("seq_sales")
    E = elements(4, *setting.mdp.shape)
    small, large = (estimate(setting, make_method("grid", num_points=k, screen_profiles=0)) for k in (1000, 2000))
    assert small.step_s is None and isinstance(small, CostEstimate)
    per_candidate = model.grid_overhead_s + model.grid_s * 2000 * E
    assert large.total_s - small.total_s == pytest.approx(1000 * per_candidate)
    # screened on 250 profiles, a tenth on the other 1750 too: 1.1 scorings and 425 profiles a candidate
    screened = [estimate(setting, make_method("grid", num_points=k, screen_keep=0.1)) for k in (1000, 2000)]
    per_screened = 1.1 * model.grid_overhead_s + model.grid_s * 425 * E
    assert screened[1].total_s - screened[0].total_s == pytest.approx(1000 * per_screened)
    assert small.evaluation_s == pytest.approx(model.eval_overhead_s + model.eval_s * 10_000 * E)
    a, b = (estimate(setting, make_method("reg_lp", steps=k)) for k in (100, 200))
    assert a.step_s == pytest.approx(model.step_overhead_s["reg_lp"] + model.step_s["reg_lp"] * 20 * E)
    assert b.total_s - a.total_s == pytest.approx(3 * 100 * a.step_s + 3 * 2 * (model.eval_overhead_s + model.eval_s * 2000 * E))
    assert setting.cost("reg_lp").total_s == pytest.approx(estimate(setting, make_method("reg_lp")).total_s)
    assert "expected duration" in a.describe() and "GiB" in a.describe()
    # a larger problem costs more, and a setting the benchmark never measured takes the largest constants
    assert estimate(make_env("seq_sales", n_agents=6, size=4), make_method("reg_lp")).total_s > b.total_s
    unknown = cost_model("no_such_setting")
    assert unknown.eval_s >= model.eval_s and unknown.bytes_per_element >= model.bytes_per_element


def test_the_regularized_step_grows_with_the_newton_systems_cube():
    """The reg_lp step has the cubic term in the order of its Newton systems: all 64 states on the
    8 x 8 gridworld, 27 of 100 on matching 3 x 3 (leaves first), none on the sales trees; the
    zeroth-order step never has it."""
    from dmd_torch.cost import CostModel, step_seconds

    model = CostModel(1e-8, 0.0, {"reg_lp": 1e-7, "zeroth_order": 2e-7}, {"reg_lp": 1e-3, "zeroth_order": 2e-3},
                      1e-8, 0.0, 40.0, {"reg_lp": 1e-9})
    for name, n, m, N in (("gridworld", 5, 8, 64), ("matching", 3, 3, 27), ("seq_sales", 4, 3, 0)):
        setting = make_env(name, n_agents=n, size=m)
        E = elements(n, *setting.mdp.shape)
        assert step_seconds(model, setting, make_method("reg_lp").config) == pytest.approx(
            1e-3 + 1e-7 * 20 * E + 1e-9 * 20 * (n + 1) * N**3), name
        assert step_seconds(model, setting, make_method("zeroth_order").config) == pytest.approx(2e-3 + 2e-7 * 20 * E)
    # the packaged model reads the term where the benchmark fitted one (matching) and 0 elsewhere
    assert cost_model("matching").step_cubic_s["reg_lp"] > 0 and cost_model("seq_sales").step_cubic_s["reg_lp"] == 0


def test_a_run_past_memory_is_refused_before_work(tmp_path):
    """Grid search holds its training profiles' rewards whole: 10^8 profiles cannot fit, and the
    app says so in one line before anything is written."""
    from dmd_torch import app

    block = {"env": {"_target_": "dmd_torch.envs.sales.SequentialSales", "n_agents": 3, "size": 2},
             "method": {"name": "grid", "profiles": 100_000_000}, "output_dir": str(tmp_path / "run")}
    with pytest.raises(ValueError, match=r"^seq_sales_sym with n_agents=3, size=2 \(5 states x 4 actions\) and method "
                                         r"grid: estimated peak memory [\d.]+ GiB exceeds the [\d.]+ GiB available"):
        app.prepare(block)
    assert not (tmp_path / "run").exists()
    job = app.prepare({**block, "method": {"name": "grid"}})
    assert 0 < job.cost.total_s and job.cost.peak_bytes < 2**30
