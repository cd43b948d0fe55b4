"""A user's own setting, defined here by overriding ``Setting`` alone, gets the whole stack: its loss
and known optimum, evaluation against that optimum, every method, the app and the report."""

from __future__ import annotations

import json

import pytest
import torch

from dmd_torch import AMA, Loss, Setting, TabularMDP, evaluate, ic_audit
from dmd_torch.app import run
from dmd_torch.methods import METHODS, make_method
from dmd_torch.report import write_reports


# ---------------------------------------------------------------- the user's setting (under 60 lines)
class Procurement(Setting):
    """A buyer needs one of ``size`` tasks done by one of ``n`` sellers, who each bid a cost per
    task; the buyer pays the chosen seller's cost, her loss. VCG picks the cheapest: optimal."""

    name = "procurement"
    distributions = ("uniform", "skewed")
    objective = Loss("cost")

    def __init__(self, n_agents: int = 3, size: int = 2, distribution: str = "uniform") -> None:
        super().__init__(n_agents, size, distribution)
        self.boost_range = 1.0
        tasks, A = self.size, self.n_agents
        nxt = torch.full((1, A), -1, dtype=torch.long)  # one decision, then the episode ends
        self.mdp = TabularMDP.deterministic(["order"], [f"seller{i}" for i in range(A)], nxt)
        self._scale = torch.arange(1, A + 1, dtype=torch.float64) if distribution == "skewed" else torch.ones(A, dtype=torch.float64)
        self._tasks = tasks

    @property
    def type_dim(self) -> int:
        return 1

    @property
    def report_key(self) -> str:
        return f"procurement_{self.distribution}"

    def type_bounds(self):
        return torch.zeros(self.n_agents, 1, dtype=torch.float64), self._scale[:, None].clone()

    def sample_types(self, num, generator=None):
        return torch.rand(num, self.n_agents, 1, generator=generator, dtype=torch.float64) * self._scale[:, None]

    def rewards(self, types):
        r = types.new_zeros(types.shape[0], self.n_agents, 1, self.n_agents)
        r[:, range(self.n_agents), 0, range(self.n_agents)] = -types[:, :, 0] * self._tasks
        return r

    def loss_vector(self, types):
        return types[:, None, :, 0] * self._tasks  # q(order, seller i) = i's cost

    def known_optimum(self):
        return torch.ones(self.n_agents, dtype=torch.float64), torch.zeros(self.mdp.shape, dtype=torch.float64)


# ---------------------------------------------------------------- what it gets
def test_evaluation_against_its_optimum_and_audit():
    setting = Procurement(n_agents=3, distribution="skewed")
    vcg = evaluate(AMA.vcg(setting), profiles=2000)
    assert vcg.objective == "cost" and vcg.known_optimum == pytest.approx(vcg.mean) and vcg.optimality_ratio == 1.0
    worse = AMA(setting, boosts=torch.tensor([[0.0, 0.0, 0.5]], dtype=torch.float64))
    assert evaluate(worse, profiles=2000).mean > vcg.mean  # a boost toward a dear seller costs more
    assert ic_audit(worse, setting.sample_types(50, torch.Generator().manual_seed(0))).max_ic_gain <= 1e-9


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_runs_on_it(name):
    setting = Procurement(n_agents=3, distribution="skewed")
    budget = {"grid": {"num_points": 16, "profiles": 100}}.get(name, {"steps": 20, "eval_every": 10})
    held = setting.sample_types(300, torch.Generator().manual_seed(1))
    result = make_method(name, **budget).run(AMA(setting), heldout=held)
    optimum = AMA.known_optimum(setting).objective(held).mean()
    assert optimum - 1e-12 <= result.heldout <= 1.3 * float(optimum)  # a cost: lower is better


def test_the_app_and_the_report(tmp_path):
    for method, budget in (("grid", {"num_points": 8, "profiles": 50}), ("reg_lp", {"steps": 4, "eval_every": 2})):
        cfg = {"env": {"_target_": f"{__name__}.Procurement", "n_agents": 2}, "method": {"name": method, **budget},
               "heldout_profiles": 50, "eval": {"profiles": 200}, "progress": False, "tensorboard": False,
               "output_dir": str(tmp_path / method)}
        result = run(cfg)
        assert result.setting == "procurement_uniform" and result.evaluation.optimality_ratio is not None
    written = write_reports(tmp_path)
    md = written["procurement_uniform"][0].read_text(encoding="utf-8")
    assert "cost (lower is better)" in md and "known optimum" in md and "**" in md


USER_MODULE = '''
import torch
from dmd_torch import Setting, TabularMDP


class OneShot(Setting):
    """One item to n bidders, sold once: a second-price auction under VCG."""

    name = "one_shot"

    def __init__(self, n_agents: int = 2):
        super().__init__(n_agents, size=1)
        self.mdp = TabularMDP.deterministic(["sell"], list(range(n_agents + 1)), torch.full((1, n_agents + 1), -1))

    type_dim = 1

    def type_bounds(self):
        return torch.zeros(self.n_agents, 1, dtype=torch.float64), torch.ones(self.n_agents, 1, dtype=torch.float64)

    def sample_types(self, num, generator=None):
        return torch.rand(num, self.n_agents, 1, generator=generator, dtype=torch.float64)

    def rewards(self, types):
        r = types.new_zeros(types.shape[0], self.n_agents, 1, self.n_agents + 1)
        r[:, range(self.n_agents), 0, range(1, self.n_agents + 1)] = types[:, :, 0]
        return r
'''


def test_a_setting_defined_outside_the_package_from_the_command_line(tmp_path):
    """train.py with env._target_, then evaluate.py reloads it from mechanism.json and make_tables.py reports it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_pkg" / "auctions.py").write_text(USER_MODULE)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def script(name, *args):
        proc = subprocess.run([sys.executable, str(root / "scripts" / name), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    out = tmp_path / "runs" / "grid"
    script("train.py", "env=custom", "env._target_=my_pkg.auctions.OneShot", "+env.n_agents=3", "method=grid",
           "method.num_points=16", "method.profiles=100", "heldout_profiles=50", "eval.profiles=300", "progress=false",
           f"hydra.run.dir={out}")
    saved = json.loads((out / "mechanism.json").read_text())
    assert saved["env"] == {"_target_": "my_pkg.auctions.OneShot", "n_agents": 3}
    assert (out / "mechanism.md").read_text().startswith("# AMA on one_shot")
    evaluated = script("evaluate.py", f"mechanism={out}", "profiles=300", "audit_profiles=20")
    assert "one_shot" in evaluated.stdout and (out / "evaluation.json").exists()
    tables = script("make_tables.py", str(tmp_path / "runs"))
    assert "one_shot:" in tables.stdout and (tmp_path / "runs" / "one_shot.md").exists()
