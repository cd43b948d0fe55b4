"""Tests of dmd_torch.cost: sizes known before building, refusal of what cannot fit, the estimate."""

from __future__ import annotations

import pytest
import torch

from dmd_torch import AMA, make_env
from dmd_torch.cost import CostEstimate, candidate_solves, check_fits, cost_model, elements, estimate, exact_seconds
from dmd_torch.envs.sales import SequentialSales
from dmd_torch.evaluation import profile_chunk
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
    """The estimate is the model's formula: the grid search's scorings, the steps, the evaluations."""
    setting = make_env("seq_sales", n_agents=4, size=3)
    model = cost_model("seq_sales")
    E = elements(4, *setting.mdp.shape)
    small, large = (estimate(setting, make_method("grid", num_points=k, screen_profiles=0)) for k in (1000, 2000))
    assert small.step_s is None and isinstance(small, CostEstimate)
    solves = candidate_solves(E, 2000, 2000, 500_000) - candidate_solves(E, 1000, 2000, 500_000)
    assert large.total_s - small.total_s == pytest.approx(model.grid_solve_s * solves + model.grid_s * 1000 * 2000 * E)
    # screened: a round's candidates on 250 profiles in batches 8x larger, a tenth of them on the other 1750
    screened = estimate(setting, make_method("grid", refine_rounds=0))
    head = model.grid_solve_s * candidate_solves(E, 9999, 250, 500_000) + model.grid_s * 9999 * 250 * E
    rest = model.grid_solve_s * candidate_solves(E, 1000, 1750, 500_000) + model.grid_s * 1000 * 1750 * E
    centre = model.grid_solve_s * candidate_solves(E, 1, 2000, 500_000) + model.grid_s * 2000 * E
    assert screened.total_s - 3 * screened.evaluation_s - exact_seconds(model, setting, 2000) == pytest.approx(head + rest + centre)
    assert candidate_solves(E, 9999, 250, 500_000) < candidate_solves(E, 9999, 2000, 500_000) / 4
    chunk = profile_chunk(setting)
    assert small.evaluation_s == pytest.approx(model.eval_solve_s * -(-10_000 // chunk) + model.eval_s * 10_000 * E)
    a, b = (estimate(setting, make_method("reg_lp", steps=k)) for k in (100, 200))
    assert a.step_s == pytest.approx(model.step_overhead_s["reg_lp"] + model.step_s["reg_lp"] * 20 * E)
    assert b.total_s - a.total_s == pytest.approx(3 * 100 * a.step_s + 3 * 2 * exact_seconds(model, setting, 2000))
    assert setting.cost("reg_lp").total_s == pytest.approx(estimate(setting, make_method("reg_lp")).total_s)
    assert "expected duration" in a.describe() and "GiB" in a.describe()
    # a larger problem costs more, and a setting the benchmark never measured takes the largest constants
    assert estimate(make_env("seq_sales", n_agents=6, size=4), make_method("reg_lp")).total_s > b.total_s
    unknown = cost_model("no_such_setting")
    assert unknown.eval_s >= model.eval_s and unknown.bytes_per_element >= model.bytes_per_element


@pytest.mark.parametrize(("name", "n", "m"), [("seq_sales", 3, 2), ("seq_sales", 6, 4), ("gridworld", 3, 3)])
@pytest.mark.parametrize("variant", ["grid", "grid_paper"])
def test_the_model_counts_the_solves_a_grid_search_makes(monkeypatch, name, n, m, variant):
    """What the estimate counts is what the search does: its scorings (candidates x profiles, the
    screen and the kept on the rest) and the batched solves of each, recorded from a real search."""
    from dmd_torch.methods import grid as grid_module

    setting = make_env(name, n_agents=n, size=m)
    method = make_method(variant, num_points=60, profiles=120, screen_profiles=30 if variant == "grid" else 0,
                         max_batch_elements=20_000)
    scorings, solves = [], [0]
    score, solve = grid_module.score_candidates, grid_module.leader_objective

    def spy_score(setting, lw, b, types, *args, **kwargs):
        scorings.append((lw.shape[0], types.shape[0]))
        return score(setting, lw, b, types, *args, **kwargs)

    def spy_solve(*args, **kwargs):
        solves[0] += 1
        return solve(*args, **kwargs)

    monkeypatch.setattr(grid_module, "score_candidates", spy_score)
    monkeypatch.setattr(grid_module, "leader_objective", spy_solve)
    method.run(AMA(setting), heldout=setting.sample_types(4, torch.Generator().manual_seed(0)))
    assert scorings == method.config.scorings()
    E = elements(n, *setting.mdp.shape)
    assert solves[0] == sum(candidate_solves(E, C, P, 20_000) for C, P in scorings)


def test_an_estimate_past_the_measured_sizes_or_for_an_unmeasured_setting_says_so():
    """Within the benchmark's largest size (the gridworld's range covers 5 agents on 8 x 8) no
    caveat; past it (3 agents on 15 x 15: 225 states) the estimate is flagged as extrapolated, in
    the line the app prints; a setting the benchmark never measured is flagged as such."""
    model = cost_model("gridworld")
    assert model.measured and 64 <= model.max_states < 225 and model.max_elements >= 1536
    assert make_env("gridworld", n_agents=5, size=8).cost("reg_lp").caveat is None
    far = make_env("gridworld", n_agents=3, size=15).cost("reg_lp")
    assert far.caveat.startswith(f"extrapolated past the largest size benchmarked ({model.max_states:,} states, "
                                 f"{model.max_elements:,} elements per profile; here 225 and 3,600)")
    assert far.describe().endswith(far.caveat) and "\n" not in far.describe()

    class Resale(SequentialSales):
        name = "resale"

    mine = estimate(Resale(n_agents=2, size=2), make_method("grid"))
    assert mine.caveat.startswith("setting 'resale' was not benchmarked") and not cost_model("resale").measured


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


def test_a_training_step_holds_all_its_profiles_at_once():
    """A step solves its profiles in one batch: its memory grows with them past an evaluation batch."""
    setting = make_env("seq_sales", n_agents=6, size=5)  # 137,249 elements a profile: 20 are 5x a batch
    model = cost_model("seq_sales")
    per_step = {pps: estimate(setting, make_method("reg_lp", profiles_per_step=pps)).peak_bytes for pps in (20, 40)}
    held = model.bytes_per_element * 20 * elements(6, *setting.mdp.shape, True)
    assert per_step[20] >= held and per_step[40] - per_step[20] == pytest.approx(held, rel=1e-9)
