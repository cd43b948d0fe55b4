"""Bad input, tried as a user would, through the Python API and the command line.

Every case must stop with a clear one-line error that names what is wrong (and, where there is a
choice, what is allowed), raised before any work, and must leave no result file written or changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from dmd_torch import AMA, TabularMDP, evaluate, ic_audit, load_mechanism, make_env, regularized_occupancy, save_mechanism
from dmd_torch.app import evaluate_saved, run
from dmd_torch.config import register_configs
from dmd_torch.envs import setting_from_config
from dmd_torch.envs.sales import SequentialSales
from dmd_torch.envs.scheduling import TaskScheduling
from dmd_torch.evaluation import objective_values
from dmd_torch.methods import make_method
from dmd_torch.report import write_reports

ROOT = Path(__file__).resolve().parents[1]
register_configs()
F64 = torch.float64


@contextlib.contextmanager
def unchanged(directory: Path) -> Iterator[None]:
    """Asserts that no file below ``directory`` is created, changed or removed (Hydra's own record of
    a command line, ``.hydra/`` and the job's log, aside)."""
    def snap() -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in directory.rglob("*")
                if p.is_file() and p.name != ".lock" and ".hydra" not in p.parts and p.suffix != ".log"}

    before = snap()
    yield
    assert snap() == before, "a result file was written or changed"


def _one_line(err: BaseException, match: str) -> None:
    text = str(err)
    assert "\n" not in text, text
    assert __import__("re").search(match, text), f"{match!r} not in {text!r}"


# ------------------------------------------------------------------------------- settings of a user
class OneProfile(SequentialSales):
    def rewards(self, types):
        return super().rewards(types)[:1]


class OneAgent(SequentialSales):
    def rewards(self, types):
        return super().rewards(types)[:, :1]


class Float32Rewards(SequentialSales):
    def rewards(self, types):
        return super().rewards(types).float()


class ListRewards(SequentialSales):
    def rewards(self, types):
        return super().rewards(types).tolist()


class FewSamples(SequentialSales):
    def sample_types(self, num, generator=None):
        return super().sample_types(num, generator)[:-1]


class NaNRewards(SequentialSales):
    def rewards(self, types):
        r = super().rewards(types)
        r[:, 0, 0, 1] = math.nan
        return r


class ShortLoss(TaskScheduling):
    def loss_vector(self, types):
        return super().loss_vector(types)[:, :-1]

    def policy_loss(self, types, occupancy):  # the dense form, which reads the loss vector
        return occupancy.inner(self.checked_loss_vector(types))


def _nan_gridworld_outcome():
    env = make_env("gridworld", n_agents=2, size=3)
    r = env.checked_rewards(env.sample_types(3))
    r[0, 0, 1, 2] = math.nan
    from dmd_torch.follower import EXACT

    EXACT.respond(env.mdp, r, torch.zeros(2, dtype=F64), torch.zeros(env.mdp.shape, dtype=F64), without=True)


def _sales(**kw):
    return make_env("seq_sales", n_agents=2, size=2, **kw)


def _boosts(value: float) -> torch.Tensor:
    """Boosts of 2 bidders and 1 item with ``value`` on (start, nobody)."""
    b = torch.zeros(1, 3, dtype=F64)
    b[0, 0] = value
    return b


TYPES = torch.rand(5, 2, 1, dtype=F64)

#: (call, error type, message pattern) for the Python API.
API: dict[str, tuple[Callable[[], object], type[Exception], str]] = {
    "unknown setting": (lambda: make_env("auction"), ValueError, "unknown setting 'auction'; allowed: seq_sales, scheduling, gridworld"),
    "unknown distribution": (lambda: _sales(distribution="normal"), ValueError, "unknown distribution 'normal' for seq_sales; allowed: symmetric, asymmetric"),
    "no agents": (lambda: make_env("seq_sales", n_agents=0), ValueError, "n_agents must be an integer >= 1, got 0"),
    "fractional agents": (lambda: make_env("seq_sales", n_agents=2.5), ValueError, "n_agents must be an integer >= 1, got 2.5"),
    "no items": (lambda: make_env("seq_sales", size=0), ValueError, "seq_sales size must be an integer >= 1, got 0"),
    "one-cell grid": (lambda: make_env("gridworld", size=1), ValueError, "gridworld size must be an integer >= 2, got 1"),
    "undiscounted grid": (lambda: make_env("gridworld", gamma=1.0), ValueError, r"gamma must lie in the open interval \(0, 1\), got 1.0"),
    "clamped not a bool": (lambda: make_env("scheduling", clamped="yes"), ValueError, "clamped must be true or false, got 'yes'"),
    "unknown option": (lambda: _sales(gamma=0.5), ValueError, "unknown option.* gamma for seq_sales.*allowed: n_agents, size, distribution"),
    "env block without a class": (lambda: setting_from_config({"n_agents": 2}), ValueError, "needs _target_ .* or name"),
    "env target not importable": (lambda: setting_from_config({"_target_": "nowhere.Setting"}), ValueError, "cannot import env _target_ 'nowhere.Setting'"),
    "env target not a setting": (lambda: setting_from_config({"_target_": "pathlib.Path"}), ValueError, "'pathlib.Path' is not a subclass of dmd_torch.Setting"),
    "rewards of one profile": (lambda: AMA.vcg(OneProfile(2, 2)).outcome(TYPES), ValueError, r"OneProfile.rewards must return shape \[(\d), 2, 4, 3\], got \[1, 2, 4, 3\]"),
    "rewards of one agent": (lambda: AMA.vcg(OneAgent(2, 2)).outcome(TYPES), ValueError, r"OneAgent.rewards must return shape \[(\d), 2, 4, 3\], got \[\1, 1, 4, 3\]"),
    "rewards in float32": (lambda: AMA.vcg(Float32Rewards(2, 2)).outcome(TYPES), ValueError, "Float32Rewards.rewards must return the MDP's dtype torch.float64, got torch.float32"),
    "rewards as a list": (lambda: AMA.vcg(ListRewards(2, 2)).outcome(TYPES), ValueError, "ListRewards.rewards must return a torch.Tensor, got list"),
    "too few samples": (lambda: evaluate(AMA.vcg(FewSamples(2, 2)), profiles=10), ValueError, "FewSamples.sample_types: 10 profiles were asked for, 9 drawn"),
    "NaN rewards": (lambda: AMA.vcg(NaNRewards(2, 2)).outcome(TYPES), ValueError, "NaN or inf"),
    "NaN rewards with cycles": (_nan_gridworld_outcome, ValueError, "rewards contain NaN or inf"),
    "short loss vector": (lambda: AMA.vcg(ShortLoss(2, 2)).objective(torch.rand(4, 2, 2, dtype=F64)), ValueError, r"ShortLoss.loss_vector must return shape \[4, 3, 2\]"),
    "zero weight": (lambda: AMA(_sales(), weights=torch.tensor([1.0, 0.0])), ValueError, "weights must be finite and > 0"),
    "weights of the wrong size": (lambda: AMA(_sales(), weights=torch.ones(3)), ValueError, r"weights must have shape \[n\] = \[2\], got \(3,\)"),
    "boosts of the wrong shape": (lambda: AMA(_sales(), boosts=torch.zeros(2, 2)), ValueError, r"boosts must have shape \[S, A\] = \[4, 3\]"),
    "NaN boosts": (lambda: AMA(_sales(), boosts=torch.full((4, 3), math.nan)), ValueError, "boosts contain NaN or inf"),
    "boost of 1e15": (lambda: AMA(make_env("seq_sales", n_agents=2, size=1), boosts=_boosts(1e15)).outcome(TYPES), ValueError, "not strategyproof in floating point; allowed: up to 0.001"),
    "boost of 1e12 in evaluation": (lambda: evaluate(AMA(make_env("seq_sales", n_agents=2, size=1), boosts=_boosts(1e12)), profiles=10), ValueError, "dwarf the rewards"),
    "weight of 1e-20": (lambda: AMA(_sales(), weights=torch.tensor([1.0, 1e-20])).objective(TYPES), ValueError, "not strategyproof in floating point"),
    "NaN types": (lambda: AMA.vcg(_sales()).outcome(torch.full((2, 2, 1), math.nan, dtype=F64)), ValueError, "types contain NaN or inf"),
    "types of the wrong shape": (lambda: AMA.vcg(_sales()).outcome(torch.zeros(2, 3, 1, dtype=F64)), ValueError, r"types must have shape \[B, n, K\] = \[B, 2, 1\], got \(2, 3, 1\)"),
    "integer types": (lambda: AMA.vcg(_sales()).outcome(torch.zeros(2, 2, 1, dtype=torch.long)), ValueError, "types must be a floating-point tensor"),
    "alpha of zero": (lambda: AMA.vcg(_sales())(TYPES, alpha=0.0), ValueError, "alpha must be a finite number > 0, got 0.0"),
    "unknown backend": (lambda: AMA.vcg(_sales())(TYPES, backend="mosek"), ValueError, "unknown backend 'mosek'; allowed: 'auto', 'tree', 'newton', 'cvxpylayers'"),
    "tree on a cyclic MDP": (lambda: AMA.vcg(make_env("gridworld"))(torch.rand(2, 2, 9, dtype=F64), backend="tree"), ValueError, "backend 'tree' does not apply here.*allowed here: auto, newton, cvxpylayers"),
    "option the tree does not take": (lambda: AMA.vcg(_sales())(TYPES, tol=1e-9), ValueError, "backend 'tree' takes no option.* tol; allowed: none"),
    "one evaluation profile": (lambda: evaluate(AMA.vcg(_sales()), profiles=1), ValueError, "profiles must be an integer >= 2, got 1"),
    "chunk of zero": (lambda: objective_values(AMA.vcg(_sales()), TYPES, chunk=0), ValueError, "chunk must be an integer >= 1, got 0"),
    "audit of no profiles": (lambda: ic_audit(AMA.vcg(_sales()), TYPES[:0]), ValueError, "ic_audit needs at least one type profile, got 0"),
    "negative prior draws": (lambda: ic_audit(AMA.vcg(_sales()), TYPES, prior_draws=-1), ValueError, "ic_audit prior_draws must be an integer >= 0"),
    "unknown method": (lambda: make_method("sgd"), ValueError, "unknown method 'sgd'; allowed: grid, zeroth_order, reg_lp"),
    "unknown method key": (lambda: make_method("reg_lp", stepz=3), ValueError, "unknown key 'stepz' for RegLPConfig; allowed: name, variant, steps"),
    "steps not a number": (lambda: make_method("reg_lp", steps="many"), ValueError, "Value 'many' of type 'str' could not be converted to Integer \\(key steps\\)"),
    "negative step size": (lambda: make_method("reg_lp", optimizer={"lr": -0.1}), ValueError, "optimizer lr \\(step size\\) must be a finite number > 0, got -0.1"),
    "LBFGS": (lambda: make_method("reg_lp", optimizer={"name": "LBFGS"}), ValueError, "unknown optimizer 'LBFGS'; allowed: ASGD, "),
    "SparseAdam": (lambda: make_method("zeroth_order", optimizer={"name": "SparseAdam"}), ValueError, "unknown optimizer 'SparseAdam'; allowed: "),
    "unknown schedule": (lambda: make_method("reg_lp", scheduler={"name": "Nope"}), ValueError, "unknown lr scheduler 'Nope'; allowed: "),
    "bad schedule arguments": (lambda: make_method("reg_lp", scheduler={"name": "StepLR"}), ValueError, "bad arguments for lr scheduler StepLR"),
    "negative alpha": (lambda: make_method("reg_lp", alpha=-0.01), ValueError, "alpha must be a finite number > 0, got -0.01"),
    "unknown backend of a method": (lambda: make_method("reg_lp", backend="mosek"), ValueError, "unknown backend 'mosek'; allowed: auto, tree, newton, cvxpylayers"),
    "more starts than grid points": (lambda: make_method("reg_lp", multistart={"starts": 5, "grid_points": 2}), ValueError, "multistart starts must be <= grid_points = 2, got 5"),
    "top_k above the points": (lambda: make_method("grid", num_points=4, top_k=5), ValueError, "grid top_k must be <= num_points = 4, got 5"),
    "screen share above one": (lambda: make_method("grid", screen_keep=1.5), ValueError, r"grid screen_keep must be in \(0, 1\], got 1.5"),
    "negative screen": (lambda: make_method("grid", screen_profiles=-1), ValueError, "grid screen_profiles must be"),
    "zero sigma": (lambda: make_method("zeroth_order", sigma=0.0), ValueError, "sigma must be a finite number > 0, got 0.0"),
    "antithetic not a bool": (lambda: make_method("zeroth_order", antithetic="maybe"), ValueError, "Value 'maybe' is not a valid bool.*antithetic"),
    "unknown init": (lambda: make_method("reg_lp", init="zeros"), ValueError, "unknown init 'zeros'; allowed: uniform, vcg"),
    "variant with a slash": (lambda: make_method("grid", variant="a/b"), ValueError, "method variant must be a non-empty name of letters"),
    "NaN alpha for the solver": (lambda: regularized_occupancy(_sales().mdp, torch.zeros(1, 4, 3, dtype=F64), math.nan), ValueError, "alpha must be positive and finite, got nan"),
    "negative newton tol": (lambda: regularized_occupancy(make_env("gridworld").mdp, torch.zeros(1, 9, 4, dtype=F64), 0.1, tol=-1.0), ValueError, "newton tol must be a finite number > 0, got -1.0"),
    "zero layer check_tol": (lambda: regularized_occupancy(_sales().mdp, torch.zeros(1, 4, 3, dtype=F64), 0.1, backend="cvxpylayers", check_tol=0), ValueError, "cvxpylayers check_tol must be a finite number > 0, got 0"),
    "unknown newton option": (lambda: regularized_occupancy(make_env("gridworld").mdp, torch.zeros(1, 9, 4, dtype=F64), 0.1, eps=1.0), ValueError, "backend 'newton' takes no option.* eps; allowed: tol, max_iter"),
    "an MDP with a cycle and no discount": (lambda: TabularMDP.deterministic([0, 1], [0], torch.tensor([[1], [0]])), ValueError, "the MDP has cycles, so it needs a discount gamma in \\(0, 1\\)"),
}


@pytest.mark.parametrize("case", sorted(API))
def test_python_api(case, tmp_path, monkeypatch):
    call, kind, match = API[case]
    monkeypatch.chdir(tmp_path)
    with unchanged(tmp_path), pytest.raises(kind) as info:
        call()
    _one_line(info.value, match)


# ------------------------------------------------------------------------------- mechanism files
def _saved(tmp_path: Path) -> Path:
    save_mechanism(AMA(_sales(), boosts=0.1 * torch.ones(4, 3, dtype=F64)), tmp_path / "run")
    return tmp_path / "run"


def _edit_json(edit: Callable[[dict], object]) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        data = json.loads((_saved(tmp_path) / "mechanism.json").read_text())
        edited = edit(data)
        (tmp_path / "bad.json").write_text(json.dumps(data if edited is None else edited))
        return tmp_path / "bad.json"
    return make


def _pt(content: Callable[[Path], object]) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        torch.save(content(tmp_path), tmp_path / "bad.pt")
        return tmp_path / "bad.pt"
    return make


def _truncated_pt(tmp_path: Path) -> Path:
    data = (_saved(tmp_path) / "mechanism.pt").read_bytes()
    (tmp_path / "bad.pt").write_bytes(data[: len(data) // 2])
    return tmp_path / "bad.pt"


class _Payload:
    """A pickle that would run code when loaded."""

    def __reduce__(self):
        return (os.system, ("touch code_ran",))


def _wrong_shapes(tmp_path: Path) -> dict:
    state = torch.load(_saved(tmp_path) / "mechanism.pt", weights_only=True)
    state["boosts"] = torch.zeros(2, 2, dtype=F64)
    return state


def _state_with(**changes):
    def make(tmp_path: Path) -> dict:
        state = torch.load(_saved(tmp_path) / "mechanism.pt", weights_only=True)
        state.update(changes)
        return state
    return make


def _text(name: str, text: str) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        (tmp_path / name).write_text(text)
        return tmp_path / name
    return make


FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "JSON null": (_text("null.json", "null"), "must hold a JSON object with env, weights, boosts, states and actions, got NoneType"),
    "JSON list": (_text("list.json", "[1, 2]"), "got list"),
    "not JSON": (_text("bad.json", "{weights:"), "is not valid JSON"),
    "no boosts": (_edit_json(lambda d: d.pop("boosts") and None), "mechanism file lacks boosts"),
    "negative weight": (_edit_json(lambda d: d.update(weights=[1.0, -1.0])), "mechanism weights must be > 0"),
    "text weights": (_edit_json(lambda d: d.update(weights=["a", "b"])), "mechanism weights must be numbers"),
    "repeated state label": (_edit_json(lambda d: d["states"].__setitem__(1, d["states"][2])), r"repeats state label\(s\) \[\[1\]\]; each must appear once"),
    "unknown action label": (_edit_json(lambda d: d["actions"].__setitem__(0, "up")), r"unknown action label\(s\) \['up'\]"),
    "unknown setting in env": (_edit_json(lambda d: d.update(env={"name": "auction"})), "unknown setting 'auction'"),
    "tensor in .pt": (_pt(lambda p: torch.zeros(3)), "is not a mechanism state dict: it must map log_weights, boosts, _extra_state, got a Tensor"),
    "list in .pt": (_pt(lambda p: [1, 2]), "is not a mechanism state dict: it must map .*got a list"),
    "truncated .pt": (_truncated_pt, "is not a mechanism state dict saved by save_mechanism"),
    "wrong shapes in .pt": (_pt(_wrong_shapes), r"boosts must be a tensor of shape \(4, 3\), got \(2, 2\)"),
    "NaN in .pt": (_pt(_state_with(log_weights=torch.tensor([0.0, math.nan], dtype=F64))), "holds NaN, inf or non-numeric log_weights"),
    "code in .pt": (_pt(lambda p: {"log_weights": _Payload()}), "is not a mechanism state dict saved by save_mechanism"),
    "unknown suffix": (_text("mechanism.yaml", "a: 1"), r"unknown mechanism file type '.yaml'; allowed: .json, .pt"),
}


@pytest.mark.parametrize("case", sorted(FILES))
def test_mechanism_files(case, tmp_path, monkeypatch):
    make, match = FILES[case]
    monkeypatch.chdir(tmp_path)
    path = make(tmp_path)
    with unchanged(tmp_path), pytest.raises(ValueError) as info:
        load_mechanism(path)
    _one_line(info.value, match)
    assert not (tmp_path / "code_ran").exists()  # refused without running the pickle's code


# ------------------------------------------------------------------------------- the apps
TINY = ["heldout_profiles=40", "eval.profiles=100", "progress=false", "tensorboard=false", "method.steps=2",
        "method.eval_every=1", "method.multistart.starts=1"]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


TRAIN: dict[str, tuple[list[str], str]] = {
    "negative alpha": (["method.alpha=-1"], "alpha must be a finite number > 0, got -1.0"),
    "one evaluation profile": (["eval.profiles=1"], "eval.profiles must be an integer >= 2, got 1"),
    "no held-out profiles": (["heldout_profiles=0"], "heldout_profiles must be an integer >= 1, got 0"),
    "no threads": (["threads=0"], "threads must be an integer >= 1, got 0"),
    "negative seed": (["seed=-1"], "seed must be an integer >= 0, got -1"),
    "tpu": (["device=tpu"], "unknown device 'tpu'; allowed: cpu, cuda, cuda:N"),
    "cuda without a GPU": (["device=cuda"], "device 'cuda' is not available here; allowed: cpu"),
    "tree on the gridworld": (["env=gridworld", "method.backend=tree"], "backend 'tree' does not apply here.*allowed here: auto, newton, cvxpylayers"),
    "tied boosts on the gridworld": (["env=gridworld", "method.tied=true"], "reg_lp tied=true needs an acyclic MDP.*gridworld has cycles; allowed: tied=false or null"),
    "tol for the tree": (["+method.solver_options.tol=-1"], "backend 'tree' takes no option.* tol; allowed: none"),
    "bogus layer option": (["env=gridworld", "method.backend=cvxpylayers", "+method.solver_options.bogus=1"],
                           "backend 'cvxpylayers' takes no option.* bogus; allowed: layer_backward, check_tol, solver_args"),
    "LBFGS": (["method.optimizer.name=LBFGS"], "unknown optimizer 'LBFGS'; allowed: "),
    "user setting not importable": (["env=custom", "env._target_=my_pkg.Missing"], "cannot import env _target_ 'my_pkg.Missing'"),
    "user setting not given": (["env=custom"], r"env._target_ is missing: give it, e.g. on the command line as env._target_=\.\.\."),
}


@pytest.mark.parametrize("case", sorted(TRAIN))
def test_train(case, tmp_path):
    overrides, match = TRAIN[case]
    out = tmp_path / "run"
    cfg = _compose([*TINY, f"output_dir={out}", *overrides])
    with unchanged(tmp_path), pytest.raises(ValueError) as info:
        run(cfg)
    _one_line(info.value, match)
    assert not out.exists()  # refused before the run directory was made


def test_train_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    with unchanged(tmp_path), pytest.raises(ValueError) as info:
        run(_compose([*TINY, f"output_dir={tmp_path / 'taken'}"]))
    _one_line(info.value, "output directory .*taken is a file; allowed: a directory")


def test_train_output_dir_that_cannot_be_made(tmp_path):
    with unchanged(tmp_path), pytest.raises(ValueError) as info:
        run(_compose([*TINY, "output_dir=/proc/nope"]))
    _one_line(info.value, "cannot write into output directory /proc/nope: .*; allowed: a writable directory")


def test_two_runs_into_one_directory(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as lock:  # another run holds the directory
        fcntl.flock(lock, fcntl.LOCK_EX)
        with unchanged(tmp_path), pytest.raises(ValueError) as info:
            run(_compose([*TINY, f"output_dir={out}"]))
    _one_line(info.value, "another run is writing into .*run .*wait for it or choose another output_dir")


@pytest.mark.parametrize("change, key", [("seed=1", "seed"), ("method.alpha=0.02", "method.alpha"),
                                         ("env.n_agents=2", "env.n_agents"), ("eval.profiles=200", "eval_profiles")])
def test_rerun_with_another_configuration(tmp_path, change, key):
    out = tmp_path / "run"
    run(_compose([*TINY, f"output_dir={out}"]))
    with unchanged(tmp_path), pytest.raises(ValueError) as info:
        run(_compose([*TINY, f"output_dir={out}", change]))
    _one_line(info.value, f"holds a finished run with another configuration \\(differs in [^)]*{key}.*\\); rerun with force=true")


EVALUATE: dict[str, tuple[Callable[[Path], dict], str]] = {
    "no such file": (lambda p: {"mechanism": str(p / "missing.json")}, "no mechanism file at"),
    "one profile": (lambda p: {"mechanism": str(_saved(p)), "profiles": 1}, "profiles must be an integer >= 2, got 1"),
    "negative seed": (lambda p: {"mechanism": str(_saved(p)), "seed": -1}, "seed must be an integer >= 0, got -1"),
    "fractional seed": (lambda p: {"mechanism": str(_saved(p)), "seed": 1.5}, "Value '1.5' of type 'float' could not be converted to Integer \\(key seed\\)"),
    "one audit profile": (lambda p: {"mechanism": str(_saved(p)), "audit_profiles": 1}, "audit_profiles must be an integer >= 2, got 1"),
    "no mechanism": (lambda p: {}, "mechanism is missing: give it"),
    "a boost of 1e15": (lambda p: {"mechanism": str(_edit_json(lambda d: d["boosts"][0].__setitem__(0, 1e15))(p))}, "not strategyproof in floating point"),
}


@pytest.mark.parametrize("case", sorted(EVALUATE))
def test_evaluate(case, tmp_path):
    make, match = EVALUATE[case]
    cfg = make(tmp_path)
    with unchanged(tmp_path), pytest.raises((ValueError, FileNotFoundError)) as info:
        evaluate_saved(cfg)
    _one_line(info.value, match)


def test_report_of_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        write_reports(tmp_path / "nowhere")
    assert write_reports(tmp_path) == {} and not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------- the command line
def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(
    "script, args, first_line",
    [
        ("train.py", ["method.alpha=-0.5"], "error: alpha must be a finite number > 0, got -0.5"),
        ("evaluate.py", [], "error: mechanism is missing: give it, e.g. on the command line as mechanism=..."),
        ("evaluate.py", ["mechanism=missing.json"], "error: no mechanism file at"),
        ("make_tables.py", ["nowhere"], "error: no such directory: nowhere"),
    ],
)
def test_command_line_errors_are_one_line(script, args, first_line, tmp_path):
    extra = [f"hydra.run.dir={tmp_path / 'run'}"] if script == "train.py" else []
    with unchanged(tmp_path):
        proc = _script(script, *args, *extra, cwd=tmp_path)
    assert proc.returncode in (1, 2) and proc.stderr.strip().startswith(first_line), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("override, key", [("force=maybe", "force"), ("seed=1.5", "seed"), ("method.stepz=3", "method.stepz")])
def test_command_line_type_errors_name_the_key(override, key, tmp_path):
    """Types and keys are Hydra's to check: its report names the override, the key and the type."""
    with unchanged(tmp_path):
        proc = _script("train.py", override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 1 and f"full_key: {key}" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_ctrl_c_prints_no_traceback(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), "progress=false", "method.steps=100000",
                             f"hydra.run.dir={out}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(out.glob("events.out.tfevents.*")) and time.time() < deadline:  # training has started
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "interrupted;" in stdout and "no result files of this run" in stdout and not (out / "results.json").exists()
