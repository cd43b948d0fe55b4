"""Evaluation against the independent reference values (``dmd_torch.reference``) and the IC/IR audit."""

import math

import pytest
import torch

from dmd_torch import AMA, evaluate, ic_audit, make_env
from dmd_torch.reference import paper_tables, vcg_reference

SETTINGS = {
    "seq_sales_sym": ("seq_sales", "symmetric"),
    "seq_sales_asym": ("seq_sales", "asymmetric"),
    "scheduling_sym": ("scheduling", "symmetric"),
    "scheduling_asym": ("scheduling", "asymmetric"),
    "gridworld": ("gridworld", "one_cell"),
}
# A fast subset of the 32 reference cells runs by default; `pytest -m slow` runs them all.
FAST = {("seq_sales_sym", 3, 2), ("seq_sales_asym", 4, 3), ("scheduling_sym", 2, 4), ("scheduling_asym", 3, 4), ("gridworld", 2, 3)}


def _cells(rows):
    params = []
    for row in rows:
        key = (row.setting, row.n, row.m)
        marks = () if key in FAST else (pytest.mark.slow,)
        params.append(pytest.param(row, marks=marks, id=f"{key[0]}-n{key[1]}-m{key[2]}"))
    return params


def _env(row):
    name, dist = SETTINGS[row.setting]
    env = make_env(name, n_agents=row.n, size=row.m, distribution=dist)
    assert env.report_key == row.setting
    return env


def test_reference_data_ships_with_the_package():
    assert len(vcg_reference()) == 32 and len(paper_tables()) == 32
    assert {r.setting for r in vcg_reference()} == set(SETTINGS)
    assert sum(r.known_optimum is not None for r in paper_tables()) == 16


@pytest.mark.parametrize("row", _cells(vcg_reference()))
def test_vcg_matches_reference(row):
    res = evaluate(AMA.vcg(_env(row)), profiles=10_000, seed=0)
    assert abs(res.vcg_mean - row.value) <= 3 * math.hypot(res.vcg_stderr, row.stderr) + 1e-12


@pytest.mark.parametrize("row", _cells([r for r in paper_tables() if r.known_optimum is not None]))
def test_myerson_reaches_known_optimum(row):
    env = _env(row)
    res = evaluate(AMA.known_optimum(env), profiles=10_000, seed=1)
    assert abs(res.mean - row.known_optimum) <= 3 * res.stderr
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


def test_soundness_of_large_boosts_is_flagged_then_refused():
    """Boosts that dwarf the rewards: 1e3 sound, 1e6 flagged (warning, recorded), 1e12 refused."""
    from dmd_torch.soundness import REFUSE, SOUND, ic_tolerance

    env = make_env("seq_sales", n_agents=3, size=2)

    def ama(b):
        boosts = torch.zeros(env.mdp.shape, dtype=torch.float64)
        boosts[0, 0] = b
        return AMA(env, boosts=boosts)

    assert ama(1e3).ic_tolerance() <= SOUND < ama(1e6).ic_tolerance() <= REFUSE
    assert evaluate(ama(1e3), profiles=100).numerically_sound
    with pytest.warns(UserWarning, match="strategyproof only up to 2.0e-06"):
        flagged = evaluate(ama(1e6), profiles=100)
    assert not flagged.numerically_sound and flagged.ic_tolerance == pytest.approx(2.03e-6, rel=0.01)
    assert ic_tolerance(env, torch.ones(3, dtype=torch.float64), ama(1e12).boosts) > REFUSE
    with pytest.raises(ValueError, match="not strategyproof in floating point"):
        ama(1e12).outcome(env.sample_types(3))
    # the tolerance is an upper bound: the audit's gain from lying at 1e6 stays below it
    audit = ic_audit(ama(1e6), env.sample_types(40, torch.Generator().manual_seed(0)))
    assert audit.max_ic_gain <= flagged.ic_tolerance
