"""The library on another device gives the CPU's answers: ``pytest tests/test_device.py --device cuda``.

Each test builds one small cell of every setting twice, on the CPU and on the device, with the same
parameters and profiles, and compares: the exact outcome (policies, payments, objective), the
regularized objective and its gradient, each method's short run, and ``evaluate``. Skipped where
the device is not available (CI has no GPU); ``--device cpu`` runs them against the CPU itself.
"""

from __future__ import annotations

import pytest
import torch

from dmd_torch import AMA, make_env
from dmd_torch.envs import Setting
from dmd_torch.evaluation import evaluate
from dmd_torch.methods import make_method

CELLS = [
    ("seq_sales", 3, 2, "symmetric"),
    ("seq_sales", 2, 2, "asymmetric"),
    ("scheduling", 2, 3, "asymmetric"),
    ("gridworld", 2, 3, "one_cell"),
    ("matching", 2, 2, "asymmetric"),
    ("static_auction", 2, 2, "uniform"),
]
IDS = [f"{name}-{n}x{m}-{dist}" for name, n, m, dist in CELLS]


def _pair(cell: tuple, device: torch.device) -> tuple[Setting, AMA, AMA]:
    """The setting, an AMA with random parameters on the CPU, and the same AMA on ``device``."""
    name, n, m, dist = cell
    setting = make_env(name, n_agents=n, size=m, distribution=dist)
    gen = torch.Generator().manual_seed(7)
    weights = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5 if setting.optimize_weights else None
    boosts = torch.rand(setting.mdp.shape, generator=gen, dtype=torch.float64) - 0.5
    cpu = AMA(setting, weights=weights, boosts=boosts)
    on_device = make_env(name, n_agents=n, size=m, distribution=dist).to(device)
    moved = AMA(on_device, weights=weights, boosts=boosts).to(device)
    return setting, cpu, moved


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-9) -> None:
    torch.testing.assert_close(actual.cpu(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_exact_outcome_matches_cpu(cell, device):
    setting, cpu, moved = _pair(cell, device)
    types = setting.sample_types(300, torch.Generator().manual_seed(1))
    want, got = cpu.outcome(types), moved.outcome(types.to(device))
    assert got.objective.device.type == device.type
    assert torch.equal(got.policy.cpu(), want.policy)
    for field in ("payments", "agent_values", "asw", "asw_without", "objective"):
        _close(getattr(got, field), getattr(want, field))
    _close(moved.objective(types.to(device)), cpu.objective(types))


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_regularized_objective_and_gradient_match_cpu(cell, device):
    setting, cpu, moved = _pair(cell, device)
    types = setting.sample_types(20, torch.Generator().manual_seed(2))
    values = []
    for ama, t in ((cpu, types), (moved, types.to(device))):
        objective = ama(t, alpha=0.05).mean()
        objective.backward()
        values.append((objective.detach(), *(p.grad for p in (ama.log_weights, ama.boosts) if p.requires_grad)))
    for got, want in zip(values[1], values[0]):
        _close(got, want, tol=1e-7)  # iterative backends stop at their tolerance on either device


@pytest.mark.parametrize("method", ["grid", "reg_lp", "zeroth_order"])
@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_method_runs_match_cpu(cell, method, device):
    setting, cpu, moved = _pair(cell, device)
    held = setting.sample_types(200, torch.Generator().manual_seed(3))
    short = {"grid": {"num_points": 16, "profiles": 100},
             "reg_lp": {"steps": 3, "multistart": {"starts": 1}},
             "zeroth_order": {"steps": 3}}[method]
    want = make_method(method, **short).run(cpu, heldout=held, seed=0)
    got = make_method(method, **short).run(moved, heldout=held.to(device), seed=0)
    assert got.heldout == pytest.approx(want.heldout, rel=1e-7, abs=1e-9)
    _close(moved.boosts.detach(), cpu.boosts.detach(), tol=1e-6)


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_evaluate_matches_cpu(cell, device):
    _, cpu, moved = _pair(cell, device)
    want, got = evaluate(cpu, profiles=500, seed=4), evaluate(moved, profiles=500, seed=4)
    assert got.mean == pytest.approx(want.mean, rel=1e-9, abs=1e-12)
