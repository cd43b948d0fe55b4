"""Tests of the Hydra app (dmd_torch.app, scripts/train.py) and of every config in conf/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from dmd_torch import app
from dmd_torch.app import method_from_config, reference_key, setting_from_config
from dmd_torch.storage import load_mechanism

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
ENVS = sorted(p.stem for p in (CONF / "env").glob("*.yaml"))
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
TINY = ["heldout_profiles=60", "eval.profiles=200", "progress=false"]
TINY_METHOD = {
    "reg_lp": ["method.steps=4", "method.eval_every=2", "method.multistart.starts=1"],
    "zeroth_order": ["method.steps=4", "method.eval_every=2", "method.num_perturbations=4"],
    "grid": ["method.num_points=8", "method.profiles=40"],
}


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_config_groups_are_complete():
    assert ENVS == ["gridworld", "scheduling", "scheduling_asym", "seq_sales", "seq_sales_asym"]
    assert METHODS == ["grid", "reg_lp", "reg_lp_tuned", "zeroth_order"]


@pytest.mark.parametrize("env", ENVS)
@pytest.mark.parametrize("method", METHODS)
def test_every_config_composes_and_instantiates(env, method):
    cfg = _compose([f"env={env}", f"method={method}"])
    setting = setting_from_config(cfg.env)
    m = method_from_config(cfg.method)
    m.check_setting(setting)
    assert m.name == method.removesuffix("_tuned") and setting.name == cfg.env.name
    assert reference_key(setting) in {"seq_sales_sym", "seq_sales_asym", "scheduling_sym", "scheduling_asym", "gridworld"}


def test_defaults_carry_the_paper_hyperparameters():
    cfg = _compose([])
    assert cfg.env.name == "seq_sales" and cfg.method.name == "reg_lp" and cfg.eval.profiles == 10_000
    reg = _compose(["method=reg_lp"]).method
    assert (reg.alpha, reg.profiles_per_step, reg.optimizer.lr, reg.backend) == (0.01, 20, 0.01, "auto")
    tuned = _compose(["method=reg_lp_tuned"]).method
    assert (tuned.name, tuned.alpha, tuned.alpha_final, tuned.optimizer.lr, tuned.profiles_per_step) == ("reg_lp", 0.05, 0.02, 0.03, 20)
    assert reg.alpha_final is None  # the paper's alpha throughout
    assert (tuned.variant, reg.variant) == ("reg_lp_tuned", "reg_lp")  # labels: output directory, report column
    zo = _compose(["method=zeroth_order"]).method
    assert (zo.num_perturbations, zo.sigma, zo.profiles_per_step, zo.optimizer.lr) == (20, 0.05, 20, 0.1)
    grid = _compose(["method=grid"]).method
    assert (grid.num_points, grid.profiles) == (10_000, 2_000)


def _run(tmp_path: Path, overrides: list[str]) -> tuple[dict, Path]:
    out = tmp_path / "run"
    cfg = _compose([*TINY, f"output_dir={out}", *overrides])
    return app.run(cfg), out


@pytest.mark.parametrize(
    "env, method, extra",
    [
        ("seq_sales_asym", "reg_lp", ["env.n_agents=2", "method.multistart.starts=2", "method.multistart.grid_points=4", "method.multistart.grid_profiles=20"]),
        ("seq_sales", "zeroth_order", ["env.n_agents=2"]),
        ("seq_sales", "grid", ["env.n_agents=2"]),
        ("scheduling_asym", "zeroth_order", ["env.size=2"]),
        ("gridworld", "reg_lp", ["env.size=2", "method.optimizer.name=SGD", "method.scheduler.name=StepLR", "+method.scheduler.kwargs.step_size=2"]),
    ],
)
def test_run_end_to_end_writes_all_files(tmp_path, env, method, extra):
    results, out = _run(tmp_path, [f"env={env}", f"method={method}", *TINY_METHOD[method], *extra])
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for key in ("setting", "env", "method", "seed", "vcg_mean", "vcg_stderr", "mean", "stderr", "improvement_pct",
                "known_optimum", "optimality_ratio", "runtime_seconds", "steps"):
        assert key in saved, key
    assert saved["method"] == saved["variant"] == method and saved["eval_profiles"] == 200 and saved["runtime_seconds"] > 0
    assert "variant" not in saved["method_config"]  # a label, not a setting: relabelling keeps a finished run
    assert saved["setting"] == {"seq_sales_asym": "seq_sales_asym", "seq_sales": "seq_sales_sym",
                                "scheduling_asym": "scheduling_asym", "gridworld": "gridworld"}[env]
    if env.startswith("seq_sales"):
        assert 0 < saved["known_optimum"] and saved["optimality_ratio"] == pytest.approx(saved["mean"] / saved["known_optimum"])
    else:
        assert saved["known_optimum"] is None and saved["optimality_ratio"] is None
    assert saved["steps"] == (0 if method == "grid" else 4 * saved["starts"])
    ama = load_mechanism(out)
    assert torch.allclose(ama.boosts, load_mechanism(out / "mechanism.pt").boosts)
    assert (out / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert list(out.glob("events.out.tfevents.*"))
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_tensorboard_records_training_and_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out = _run(tmp_path, ["env=seq_sales_asym", "env.n_agents=2", "method=reg_lp", *TINY_METHOD["reg_lp"]])
    acc = EventAccumulator(str(out), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/objective", "train/grad_norm", "heldout/objective", "heldout/best", "params/weight_1", "hparam/mean"):
        assert tag in tags["scalars"], tag
    assert "params/boosts" in tags["histograms"]
    assert len(acc.Scalars("train/objective")) == 4 and len(acc.Scalars("heldout/objective")) == 3


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["method.optimizer.lr=-0.01"], "lr"),
        (["method.alpha=-1"], "alpha"),
        (["method.profiles_per_step=0"], "profiles_per_step"),
        (["method.optimizer.name=Adamm"], "optimizer 'Adamm'; allowed"),
        (["method.name=newton"], "unknown method 'newton'; allowed: grid, zeroth_order, reg_lp"),
        (["env=gridworld", "method.backend=tree"], "backend 'tree'.*allowed here: auto, newton, cvxpylayers"),
        (["method=zeroth_order", "method.sigma=0"], "sigma"),
        (["method=grid", "method.profiles=0"], "profiles"),
        (["env.distribution=normal"], "allowed: symmetric, asymmetric"),
        (["heldout_profiles=0"], "heldout_profiles"),
        (["eval.profiles=1"], "eval.profiles"),
        (["device=tpu"], "device"),
        (["tune_allocator=maybe"], "tune_allocator must be true or false"),
        (["method.variant=a/b"], "method.variant must be a non-empty name"),
    ],
)
def test_bad_input_fails_before_any_work(tmp_path, overrides, match):
    cfg = _compose([*TINY, f"output_dir={tmp_path / 'run'}", *overrides])
    with pytest.raises(ValueError, match=match) as info:
        app.run(cfg)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_ctrl_c_leaves_no_partial_files(tmp_path, monkeypatch):
    def interrupted_save(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)  # Ctrl-C while mechanism.pt is being written
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, ["env.n_agents=2", *TINY_METHOD["reg_lp"]])
    out = tmp_path / "run"
    names = sorted(p.name for p in out.iterdir())
    assert "results.json" not in names and "mechanism.pt" not in names and "training_curve.png" not in names
    assert not [n for n in names if n.endswith(".tmp")]
    # the event files are closed whole: every record is readable
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out))
    acc.Reload()
    assert len(acc.Scalars("train/objective")) == 4


def test_train_script_runs_under_hydra(tmp_path):
    run_dir = tmp_path / "hydra_run"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), *TINY, "env.n_agents=2", *TINY_METHOD["reg_lp"],
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "improvement" in proc.stdout and "VCG" in proc.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["setting"] == "seq_sales_sym" and (run_dir / ".hydra" / "config.yaml").exists()


def test_finished_run_is_skipped_unless_forced(tmp_path, capsys):
    overrides = ["env.n_agents=2", *TINY_METHOD["reg_lp"]]
    first, out = _run(tmp_path, overrides)
    stamp = (out / "results.json").stat().st_mtime_ns
    again, _ = _run(tmp_path, overrides)
    assert again == json.loads(json.dumps(first)) and (out / "results.json").stat().st_mtime_ns == stamp
    assert "skipping" in capsys.readouterr().out
    _run(tmp_path, [*overrides, "method.steps=2"])  # another configuration: runs again
    assert json.loads((out / "results.json").read_text())["steps"] == 2
    _run(tmp_path, [*overrides, "force=true"])
    assert json.loads((out / "results.json").read_text())["steps"] == 4
    assert len(list(out.glob("events.out.tfevents.*"))) == 2  # this run's (scalars + hparams) only


def test_train_script_bad_input_is_one_line(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "method.alpha=-0.5", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: alpha must be a finite number > 0, got -0.5"
    assert not (tmp_path / "run" / "results.json").exists()


def test_variant_labels_the_run(tmp_path):
    """A method variant (reg_lp_tuned) runs its method and is recorded under its own label."""
    results, out = _run(tmp_path, ["env.n_agents=2", "method=reg_lp_tuned", *TINY_METHOD["reg_lp"]])
    assert (results["method"], results["variant"]) == ("reg_lp", "reg_lp_tuned")
    assert (results["method_config"]["alpha"], results["method_config"]["alpha_final"]) == (0.05, 0.02)
