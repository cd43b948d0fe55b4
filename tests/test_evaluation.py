"""Evaluation against the published reference values (``shared/reference``) and the IC/IR audit."""

import csv
import math
from pathlib import Path

import pytest
import torch

from dmd_torch import AMA, evaluate, ic_audit, known_optimum_mechanism, make_env

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
SETTINGS = {
    "seq_sales_sym": ("seq_sales", "symmetric"),
    "seq_sales_asym": ("seq_sales", "asymmetric"),
    "scheduling_sym": ("scheduling", "symmetric"),
    "scheduling_asym": ("scheduling", "asymmetric"),
    "gridworld": ("gridworld", "one_cell"),
}
# A fast subset of the 32 reference cells runs by default; `pytest -m slow` runs them all.
FAST = {("seq_sales_sym", 3, 2), ("seq_sales_asym", 4, 3), ("scheduling_sym", 2, 4), ("scheduling_asym", 3, 4), ("gridworld", 2, 3)}


def _rows(name):
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"reference data {path} not available")
    with path.open() as f:
        return list(csv.DictReader(f))


def _cells(name, only_sales=False):
    params = []
    for row in _rows(name):
        if only_sales and not row["setting"].startswith("seq_sales"):
            continue
        key = (row["setting"], int(row["n"]), int(row["m"]))
        marks = () if key in FAST else (pytest.mark.slow,)
        params.append(pytest.param(row, marks=marks, id=f"{key[0]}-n{key[1]}-m{key[2]}"))
    return params


def _env(row):
    name, dist = SETTINGS[row["setting"]]
    return make_env(name, n_agents=int(row["n"]), size=int(row["m"]), distribution=dist)


@pytest.mark.parametrize("row", _cells("vcg_reference.csv"))
def test_vcg_matches_reference(row):
    res = evaluate(AMA.vcg(_env(row)), profiles=10_000, seed=0)
    ref, ref_se = float(row["vcg_independent"]), float(row["standard_error"])
    assert abs(res.vcg_mean - ref) <= 3 * math.hypot(res.vcg_stderr, ref_se) + 1e-12


@pytest.mark.parametrize("row", _cells("paper_tables.csv", only_sales=True))
def test_myerson_reaches_known_optimum(row):
    env = _env(row)
    res = evaluate(known_optimum_mechanism(env), profiles=10_000, seed=1)
    assert abs(res.mean - float(row["known_optimum"])) <= 3 * res.stderr
    assert res.optimality_ratio == pytest.approx(1.0)


def test_evaluation_is_paired_and_reproducible():
    env = make_env("seq_sales", n_agents=3, size=2)
    a = evaluate(AMA.vcg(env), profiles=500, seed=3)
    b = evaluate(AMA.vcg(env), profiles=500, seed=3)
    assert a == b and a.mean == a.vcg_mean and a.improvement_pct == 0.0
    assert evaluate(AMA.vcg(make_env("scheduling")), profiles=100).known_optimum is None


@pytest.mark.parametrize("profiles", [0, 1, -5])
def test_bad_profile_count(profiles):
    with pytest.raises(ValueError, match="profiles must be"):
        evaluate(AMA.vcg(make_env("seq_sales")), profiles=profiles)


@pytest.mark.parametrize(
    "name, n, m, dist",
    [
        ("seq_sales", 3, 2, "symmetric"),
        ("seq_sales", 3, 3, "asymmetric"),
        ("scheduling", 2, 3, "symmetric"),
        ("scheduling", 3, 3, "asymmetric"),
        ("gridworld", 3, 3, "one_cell"),
        ("gridworld", 2, 3, "uniform"),
    ],
)
def test_random_amas_are_strategyproof(name, n, m, dist):
    gen = torch.Generator().manual_seed(7)
    env = make_env(name, n_agents=n, size=m, distribution=dist)
    for _ in range(2):
        ama = AMA(
            env,
            weights=0.2 + 2 * torch.rand(n, generator=gen, dtype=torch.float64),
            boosts=env.boost_range * (2 * torch.rand(env.mdp.shape, generator=gen, dtype=torch.float64) - 1) / 4,
        )
        audit = ic_audit(ama, env.sample_types(60, gen), prior_draws=8)
        assert audit.misreports >= 1000
        assert audit.max_ic_gain <= 1e-7
        if name != "scheduling":  # rewards >= 0: individually rational
            assert audit.min_truthful_utility >= -1e-9


def test_audit_detects_a_manipulable_rule():
    """A first-price rule (payment = own value) is not strategyproof: the audit must see it."""
    env = make_env("seq_sales", n_agents=2, size=1)

    class FirstPrice(AMA):
        def outcome(self, types):
            out = super().outcome(types)
            out.payments = out.agent_values.clone()
            out.utilities = out.agent_values - out.payments
            return out

    audit = ic_audit(FirstPrice(env), env.sample_types(50, torch.Generator().manual_seed(0)))
    assert audit.max_ic_gain > 0.01


def test_profile_chunk_and_bad_chunk():
    from dmd_torch.evaluation import MAX_BATCH_ELEMENTS, objective_values, profile_chunk

    env = make_env("seq_sales", n_agents=5, size=3)
    assert profile_chunk(env) == MAX_BATCH_ELEMENTS // (6 * 43 * 6)
    assert profile_chunk(make_env("gridworld", n_agents=5, size=4)) == MAX_BATCH_ELEMENTS // (6 * 16)  # states only
    types = env.sample_types(7, torch.Generator().manual_seed(0))
    ama = AMA.vcg(env)
    torch.testing.assert_close(objective_values(ama, types, chunk=2), objective_values(ama, types))
    with pytest.raises(ValueError, match="chunk must be an integer >= 1"):
        objective_values(ama, types, chunk=0)
