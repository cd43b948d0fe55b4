"""Tests of the Hydra app (dmd_torch.app, scripts/train.py) and of every config in conf/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from dmd_torch import app, make_env, setting_from_config
from dmd_torch.config import METHOD_CONFIGS, VARIANTS, TrainConfig, register_configs
from dmd_torch.envs import ENVS
from dmd_torch.methods import make_method
from dmd_torch.results import read_result
from dmd_torch.storage import load_mechanism

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
ENV_OPTIONS = sorted([*ENVS, *(p.stem for p in (CONF / "env").glob("*.yaml") if p.stem != "custom")])
METHOD_OPTIONS = sorted([*METHOD_CONFIGS, *VARIANTS, *(p.stem for p in (CONF / "method").glob("*.yaml"))])
TINY = ["heldout_profiles=60", "eval.profiles=200", "progress=false"]
TINY_METHOD = {
    "reg_lp": ["method.steps=4", "method.eval_every=2", "method.multistart.starts=1"],
    "zeroth_order": ["method.steps=4", "method.eval_every=2", "method.num_perturbations=4"],
    "grid": ["method.num_points=8", "method.profiles=40"],
}

register_configs()


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_config_groups_are_complete():
    assert ENV_OPTIONS == ["gridworld", "matching", "matching_asym", "scheduling", "scheduling_asym", "seq_sales",
                           "seq_sales_asym", "static_auction", "static_unit_demand"]
    assert METHOD_OPTIONS == ["grid", "grid_paper", "reg_lp", "reg_lp_paper", "zeroth_order", "zeroth_order_paper"]


@pytest.mark.parametrize("env", ENV_OPTIONS)
@pytest.mark.parametrize("method", METHOD_OPTIONS)
def test_every_config_composes_and_instantiates(env, method):
    cfg = _compose([f"env={env}", f"method={method}"])
    job = app.prepare(OmegaConf.merge(cfg, {"output_dir": "unused"}))
    assert job.method.name == method.removesuffix("_paper") and job.method.config.variant == method
    assert job.setting.report_key in {"seq_sales_sym", "seq_sales_asym", "scheduling_sym", "scheduling_asym", "gridworld",
                                      "matching_uniform", "matching_asymmetric", "static_additive", "static_unit_demand"}
    assert job.setting.config() == setting_from_config(OmegaConf.to_container(cfg.env)).config()


@pytest.mark.parametrize("name", sorted([*METHOD_CONFIGS, *VARIANTS]))
def test_python_and_the_command_line_share_the_defaults(name):
    """make_method(name) from Python gets exactly what method=<name> gets on the command line."""
    cfg = _compose([f"method={name}"])
    assert OmegaConf.to_object(cfg.method) == make_method(name).config
    assert app.load_config(OmegaConf.merge(cfg, {"env": {"_target_": "x"}})).method == make_method(name).config
    defaults = TrainConfig(env={}, method=make_method(name).config)
    composed = OmegaConf.to_object(cfg)
    assert {k: getattr(composed, k) for k in ("seed", "eval", "threads", "force")} == \
           {k: getattr(defaults, k) for k in ("seed", "eval", "threads", "force")}


@pytest.mark.parametrize("name", sorted(ENVS))
def test_env_configs_come_from_the_constructor(name):
    cfg = _compose([f"env={name}"])
    assert setting_from_config(OmegaConf.to_container(cfg.env)).config() == make_env(name).config()


def test_defaults_are_the_best_known_and_the_paper_variants_carry_the_papers_hyperparameters():
    cfg = _compose([])
    assert cfg.env._target_.endswith("SequentialSales") and cfg.method.name == "reg_lp" and cfg.eval.profiles == 10_000
    reg = _compose(["method=reg_lp"]).method
    assert (reg.alpha, reg.alpha_final, reg.profiles_per_step, reg.optimizer.lr, reg.backend) == (0.05, 0.02, 20, 0.03, "auto")
    paper = _compose(["method=reg_lp_paper"]).method
    assert (paper.name, paper.alpha, paper.alpha_final, paper.optimizer.lr, paper.profiles_per_step) == ("reg_lp", 0.01, None, 0.01, 20)
    assert paper.scheduler.name is None and reg.scheduler.name == "CosineAnnealingLR"
    assert (paper.variant, reg.variant) == ("reg_lp_paper", "reg_lp")  # labels: output directory, report column
    for name in ("zeroth_order", "zeroth_order_paper"):
        zo = _compose([f"method={name}"]).method
        assert (zo.num_perturbations, zo.sigma, zo.profiles_per_step, zo.optimizer.lr) == (20, 0.05, 20, 0.1)
    grid, grid_paper = _compose(["method=grid"]).method, _compose(["method=grid_paper"]).method
    assert (grid.num_points, grid.profiles, grid.scramble, grid.tied, grid.refine_rounds) == (10_000, 2_000, True, True, 4)
    assert (grid_paper.num_points, grid_paper.scramble, grid_paper.tied, grid_paper.refine_rounds) == (10_000, False, False, 0)


def _run(tmp_path: Path, overrides: list[str]) -> tuple[dict, Path]:
    out = tmp_path / "run"
    cfg = _compose([*TINY, f"output_dir={out}", *overrides])
    return app.run(cfg).to_dict(), out


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
    assert saved == json.loads(json.dumps(results)) and read_result(out).to_dict() == saved
    ev, tr = saved["evaluation"], saved["training"]
    assert tr["method"] == tr["variant"] == method and ev["profiles"] == 200 and tr["runtime_seconds"] > 0
    assert "variant" not in tr["config"]  # a label, not a setting: relabelling keeps a finished run
    assert saved["setting"] == {"seq_sales_asym": "seq_sales_asym", "seq_sales": "seq_sales_sym",
                                "scheduling_asym": "scheduling_asym", "gridworld": "gridworld"}[env]
    if env.startswith("seq_sales"):
        assert 0 < ev["known_optimum"] and ev["optimality_ratio"] == pytest.approx(ev["mean"] / ev["known_optimum"])
    else:
        assert ev["known_optimum"] is None and ev["optimality_ratio"] is None
    assert tr["steps"] == (0 if method == "grid" else 4 * tr["starts"])
    ama = load_mechanism(out)
    assert torch.allclose(ama.boosts, load_mechanism(out / "mechanism.pt").boosts)
    assert (out / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert list(out.glob("events.out.tfevents.*"))
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_tensorboard_records_training_and_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out = _run(tmp_path, ["env=seq_sales_asym", "env.n_agents=2", "method=reg_lp", "log_every=2", *TINY_METHOD["reg_lp"]])
    acc = EventAccumulator(str(out), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/objective", "train/grad_norm", "heldout/objective", "heldout/best", "params/weight_1", "hparam/mean"):
        assert tag in tags["scalars"], tag
    assert "params/boosts" in tags["histograms"]
    # a training point per log_every = 2 steps (their means), every held-out evaluation
    assert [e.step for e in acc.Scalars("train/objective")] == [2, 4] and len(acc.Scalars("heldout/objective")) == 3


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["method.optimizer.lr=-0.01"], "lr"),
        (["method.alpha=-1"], "alpha"),
        (["method.profiles_per_step=0"], "profiles_per_step"),
        (["method.optimizer.name=Adamm"], "optimizer 'Adamm'; allowed"),
        (["method.optimizer.name=LBFGS"], "optimizer 'LBFGS'; allowed"),
        (["method.name=newton"], "unknown method 'newton'; allowed: grid, reg_lp, zeroth_order"),
        (["env=gridworld", "method.backend=tree"], "backend 'tree' does not apply.*allowed here: auto, newton, cvxpylayers"),
        (["method=zeroth_order", "method.sigma=0"], "sigma"),
        (["method=grid", "method.profiles=0"], "profiles"),
        (["env.distribution=normal"], "allowed: symmetric, asymmetric"),
        (["heldout_profiles=0"], "heldout_profiles"),
        (["eval.profiles=1"], "eval.profiles"),
        (["device=tpu"], "device"),
        (["method.variant=a/b"], "method variant must be a non-empty name"),
        (["env=custom", "env._target_=no.such.Setting"], "cannot import env _target_ 'no.such.Setting'"),
    ],
)
def test_bad_input_fails_before_any_work(tmp_path, overrides, match):
    cfg = _compose([*TINY, f"output_dir={tmp_path / 'run'}", *overrides])
    with pytest.raises(ValueError, match=match) as info:
        app.run(cfg)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, key",
    [("tune_allocator=maybe", "tune_allocator"), ("force=maybe", "force"), ("seed=1.5", "seed"),
     ("method.steps=many", "method.steps"), ("env.n_agents=two", "env.n_agents"), ("method.stepz=3", "method.stepz")],
)
def test_types_and_keys_are_checked_by_hydra(override, key):
    """Booleans must be booleans, integers integers, keys known: Hydra refuses them at composition."""
    with pytest.raises(ConfigCompositionException) as info:
        _compose([override])
    assert key in f"{info.value} {info.value.__cause__}"


def test_ctrl_c_leaves_no_partial_files(tmp_path, monkeypatch, capsys):
    def interrupted_save(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)  # Ctrl-C while mechanism.pt is being written
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, ["env.n_agents=2", "log_every=1", *TINY_METHOD["reg_lp"]])
    out = tmp_path / "run"
    names = sorted(p.name for p in out.iterdir())
    assert "results.json" not in names and "mechanism.pt" not in names and "training_curve.png" not in names
    assert not [n for n in names if n.endswith(".tmp")]
    assert "mechanism.json" in names and "holds mechanism.json of this run" in capsys.readouterr().out
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
    assert read_result(run_dir).setting == "seq_sales_sym" and (run_dir / ".hydra" / "config.yaml").exists()


def test_finished_run_is_skipped_unless_forced(tmp_path, capsys):
    overrides = ["env.n_agents=2", *TINY_METHOD["reg_lp"]]
    first, out = _run(tmp_path, overrides)
    stamp = (out / "results.json").stat().st_mtime_ns
    again, _ = _run(tmp_path, overrides)
    assert again == json.loads(json.dumps(first)) and (out / "results.json").stat().st_mtime_ns == stamp
    assert "skipping" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"holds a finished run with another configuration \(differs in method.steps\)"):
        _run(tmp_path, [*overrides, "method.steps=2"])  # another configuration: refused, the run is kept
    assert (out / "results.json").stat().st_mtime_ns == stamp
    _run(tmp_path, [*overrides, "method.steps=2", "force=true"])
    assert read_result(out).training.steps == 2
    assert len(list(out.glob("events.out.tfevents.*"))) == 2  # this run's (scalars + hparams) only


def test_train_script_bad_input_is_one_line(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "method.alpha=-0.5", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: alpha must be a finite number > 0, got -0.5"
    assert not (tmp_path / "run" / "results.json").exists()


def test_variant_labels_the_run(tmp_path):
    """A method variant (reg_lp_paper) runs its method and is recorded under its own label."""
    results, out = _run(tmp_path, ["env.n_agents=2", "method=reg_lp_paper", *TINY_METHOD["reg_lp"]])
    tr = results["training"]
    assert (tr["method"], tr["variant"]) == ("reg_lp", "reg_lp_paper")
    assert (tr["config"]["alpha"], tr["config"]["alpha_final"]) == (0.01, None)
