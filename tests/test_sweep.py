"""End-to-end sweeps: ``scripts/train.py -m +experiment=smoke`` through the joblib and submitit_local
launchers, resuming a rerun sweep, and the report on the sweep's output.

The smoke sweep (conf/experiment/smoke.yaml) is 2 cells x 3 methods with tiny budgets: each sweep
takes seconds of work (mostly process start-up), the module about two minutes on two busy cores.
The launcher tests are skipped where the Hydra launcher plugins are not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dmd_torch.config import register_configs
from dmd_torch.methods import METHODS
from dmd_torch.report import METHODS as PAPER_VARIANTS
from dmd_torch.report import TABLES, build_rows, collect_results, render_markdown, write_reports
from dmd_torch.results import is_complete, read_result

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
CELLS = [(2, 2), (3, 2)]
JOBS = [f"n{n}_m{m}/{method}" for n, m in CELLS for method in METHODS]
TABLE_CELLS = {
    1: ("seq_sales", "symmetric", [2, 3, 4, 5], [2, 3]),
    2: ("seq_sales", "asymmetric", [2, 3, 4, 5], [2, 3]),
    3: ("scheduling", "symmetric", [2, 3], [4, 5]),
    4: ("scheduling", "asymmetric", [2, 3], [4, 5]),
    5: ("gridworld", "one_cell", [2, 3, 4, 5], [3, 4]),
}

register_configs()


def sweep(sweep_dir: Path, *overrides: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Runs the smoke sweep into ``sweep_dir`` and fails the test on a non-zero exit."""
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "-m", "+experiment=smoke",
           f"hydra.sweep.dir='{sweep_dir}'", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def check_jobs(sweep_dir: Path) -> dict[str, dict]:
    """Every job of the smoke sweep finished in its own directory with a consistent results.json."""
    found = sorted(str(p.parent.relative_to(sweep_dir)) for p in sweep_dir.rglob("results.json"))
    assert found == sorted(JOBS)
    results = {}
    for job in JOBS:
        d = sweep_dir / job
        assert is_complete(d), job
        r = read_result(d)
        ev, tr = r.evaluation, r.training
        cell, method = job.split("/")
        assert r.setting == "seq_sales_sym" and tr.method == method
        assert f"n{r.n_agents}_m{r.size}" == cell
        assert ev.profiles == 200 and tr.heldout_profiles == 60  # the smoke budgets were applied
        assert tr.steps == (0 if method == "grid" else 4)
        if method == "grid":
            assert tr.grid_candidates == 8 and tr.config["profiles"] == 40
        assert -1e-12 <= ev.mean <= ev.known_optimum * 1.5 and tr.runtime_seconds > 0  # grid may keep VCG (0)
        for name in ("mechanism.json", "mechanism.pt", "training_curve.png"):
            assert (d / name).stat().st_size > 0, (job, name)
        assert list(d.glob("events.out.tfevents.*")), job
        overrides = (d / ".hydra" / "overrides.yaml").read_text()
        assert f"env.n_agents={r.n_agents}" in overrides and f"+smoke={method}" in overrides
        results[job] = r
    for n, m in CELLS:  # VCG is evaluated on the same profiles for the three methods of a cell
        vcg = {results[f"n{n}_m{m}/{k}"].evaluation.vcg_mean for k in METHODS}
        assert len(vcg) == 1
    return results


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory) -> Path:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs hydra-joblib-launcher")
    sweep_dir = tmp_path_factory.mktemp("joblib") / "smoke"
    sweep(sweep_dir, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    return sweep_dir


def test_table_sweeps_compose():
    """Each table's sweep covers the paper's cells, the paper's variants and our defaults, lands in
    outputs/table<k>/n<n>_m<m>/<variant>, and leaves the method configs as they are."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for k, (env, dist, ns, ms) in TABLE_CELLS.items():
            # the paper's hyperparameters (its three columns), then this library's defaults (the
            # zeroth-order default is the paper's with VCG kept as a candidate: not run)
            swept = [*PAPER_VARIANTS, "grid", "reg_lp"]
            for method in swept:
                cfg = compose(config_name="config", overrides=[f"+experiment=table{k}", f"method={method}"],
                              return_hydra_config=True)
                plain = compose(config_name="config", overrides=[f"env={cfg.hydra.runtime.choices.env}", f"method={method}"])
                assert cfg.env._target_.endswith({"seq_sales": "SequentialSales", "scheduling": "TaskScheduling",
                                                  "gridworld": "Gridworld"}[env]) and cfg.env.distribution == dist
                assert cfg.method == plain.method and cfg.env == plain.env and cfg.eval == plain.eval
                assert cfg.eval.profiles == 10_000 and cfg.seed == 0
                params = cfg.hydra.sweeper.params
                assert [int(x) for x in params["env.n_agents"].split(",")] == ns
                assert [int(x) for x in params["env.size"].split(",")] == ms
                assert params["method"].split(",") == swept
                assert cfg.hydra.sweep.dir == f"outputs/table{k}"
                assert cfg.hydra.sweep.subdir == f"n{cfg.env.n_agents}_m{cfg.env.size}/{method}"
            # the sweep's cells are the paper's (the report's rows for this table)
            assert {(r.n, r.m) for r in build_rows(TABLES[k], [])} == {(n, m) for n in ns for m in ms}
            assert TABLES[k].setting.startswith(env)


def test_joblib_sweep(joblib_sweep):
    results = check_jobs(joblib_sweep)
    assert {r.n_agents for r in results.values()} == {2, 3}
    assert (joblib_sweep / "multirun.yaml").exists()


def test_submitit_local_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs hydra-submitit-launcher")
    sweep_dir = tmp_path / "smoke"
    sweep(sweep_dir, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5")
    check_jobs(sweep_dir)
    assert list((sweep_dir / ".submitit").iterdir())  # the jobs went through submitit


def test_report_on_the_sweep(joblib_sweep, tmp_path):
    written = write_reports(joblib_sweep, tmp_path)
    assert list(written) == ["table1"]
    records = collect_results(joblib_sweep)
    assert len(records) == 6
    md = (tmp_path / "table1.md").read_text(encoding="utf-8")
    assert md == render_markdown(TABLES[1], build_rows(TABLES[1], records))
    rows = {(r.n, r.m): r for r in build_rows(TABLES[1], records)}
    for n, m in CELLS:  # the defaults' runs fill the "ours" columns
        assert set(rows[(n, m)].runs) == set(METHODS) and rows[(n, m)].vcg_mean is not None
    assert "| grid (ours) | zeroth order (ours) | regularized LP (ours) |" in md
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in md.splitlines()}
    assert lines[("4", "2")].count("—") >= 6


def _snapshot(sweep_dir: Path) -> dict[str, tuple[int, bytes, int]]:
    out = {}
    for job in JOBS:
        res, mech = sweep_dir / job / "results.json", sweep_dir / job / "mechanism.json"
        if res.exists():
            out[job] = (res.stat().st_mtime_ns, res.read_bytes(), mech.stat().st_mtime_ns)
    return out


def test_rerun_skips_complete_jobs_and_force_reruns(joblib_sweep, tmp_path):
    sweep_dir = tmp_path / "smoke"
    shutil.copytree(joblib_sweep, sweep_dir)
    (sweep_dir / "n3_m2" / "grid" / "results.json").unlink()  # a job that never finished
    truncated = sweep_dir / "n2_m2" / "reg_lp" / "results.json"
    truncated.write_text(truncated.read_text()[:100])  # a damaged one
    before = _snapshot(sweep_dir)
    sweep(sweep_dir)  # Hydra's basic launcher: resuming does not depend on the launcher
    after = _snapshot(sweep_dir)
    check_jobs(sweep_dir)
    redone = {"n3_m2/grid", "n2_m2/reg_lp"}
    for job in set(JOBS) - redone:
        assert after[job] == before[job], f"{job} was rerun although its results.json was complete"
    assert after["n2_m2/reg_lp"][0] != before["n2_m2/reg_lp"][0]

    # force=true reruns complete jobs (one cell, to keep the test short)
    sweep(sweep_dir, "env.n_agents=3", "force=true")
    forced = _snapshot(sweep_dir)
    check_jobs(sweep_dir)
    for job in JOBS:
        rerun = forced[job][0] != after[job][0] and forced[job][2] != after[job][2]
        assert rerun == job.startswith("n3_m2/"), f"{job}: rerun={rerun} with force=true env.n_agents=3"


def test_new_setting_experiments_compose():
    """The matching and static studies compose, and every cell of the static study names a real setting."""
    from dmd_torch.app import prepare

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+experiment=matching"], return_hydra_config=True)
        params = cfg.hydra.sweeper.params
        assert params["env"] == "matching,matching_asym" and params["env.n_agents"] == "2,3,4"
        assert params["env.size"] == "2,3,4" and params["method"] == "grid,zeroth_order,reg_lp"
        cells = compose(config_name="config", overrides=["+experiment=static"], return_hydra_config=True)
        names = cells.hydra.sweeper.params["+static_cell"].split(",")
        assert sorted(names) == sorted(p.stem for p in (CONF / "static_cell").glob("*.yaml"))
        for name in names:
            cfg = compose(config_name="config", overrides=["+experiment=static", f"+static_cell={name}", "output_dir=x"])
            job = prepare(cfg)
            assert job.setting.report_key.startswith("static_") and f"n{job.setting.n_agents}_m{job.setting.size}" in name
