"""The training application behind ``scripts/train.py`` (Hydra): config -> setting, mechanism, method.

:func:`run` is a short sequence of named steps:

1. :func:`prepare`: the whole config is checked (types by Hydra's structured configs, ranges by the
   dataclasses, the setting by its constructor, the method against the setting) and the setting and
   method are built: a bad value raises a one-line ``ValueError`` before any work;
2. :func:`run_directory`, :func:`finished_result`: the run directory is locked while the run writes
   (a second run into it stops at once); a finished run of the same configuration there is skipped
   unless ``force=true``, so a rerun sweep resumes, and one of another configuration is refused;
3. :func:`train`: the method optimizes the AMA (paper, Definition 3.1; section 4, Algorithm 1),
   logging to TensorBoard (:class:`~dmd_torch.tracking.RunLogger`);
4. :func:`dmd_torch.evaluation.evaluate`: the paper's protocol (section 5: 10,000 fresh profiles,
   exact inner solve, VCG and the known optimum on the same profiles);
5. :func:`save_outputs`: ``mechanism.json`` and ``.pt``, the mechanism described in the setting's
   terms (``mechanism.md`` and ``.png``, :mod:`dmd_torch.description`), ``training_curve.png`` and, last,
   ``results.json`` (:class:`~dmd_torch.results.RunResult`), each written whole (write, then rename),
   so the presence of ``results.json`` marks a finished run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dmd_torch.checks import check_device
from dmd_torch.config import METHOD_CONFIGS, EvaluateConfig, TrainConfig, to_config
from dmd_torch.description import DESCRIPTION_FILES, write_description
from dmd_torch.envs import Setting, setting_from_config
from dmd_torch.evaluation import NOT_SOUND, EvaluationResult, evaluate, ic_audit
from dmd_torch.cost import CostEstimate, available_memory, estimate
from dmd_torch.mechanism import AMA
from dmd_torch.methods import Method, MethodResult, make_method
from dmd_torch.methods.base import stream_seed
from dmd_torch.results import RESULTS_FILE, RunResult, Training, is_complete, read_result, run_fingerprint, write_result
from dmd_torch.runtime import tune_allocator
from dmd_torch.storage import load_mechanism, save_mechanism
from dmd_torch.tracking import RunLogger, format4, plot_training_curve

__all__ = ["Job", "run", "evaluate_saved", "load_config", "prepare", "run_directory", "finished_result", "train", "save_outputs",
           "output_directory"]


@dataclass
class Job:
    """A checked training run, built but not started.

    Attributes:
        config: The typed configuration.
        setting: The setting.
        method: The outer method.
        out: The run directory.
        device: Where tensors live.
        fingerprint: What a finished run in ``out`` must match to be skipped.
        cost: The run's estimated time and memory (:mod:`dmd_torch.cost`).
    """

    config: TrainConfig
    setting: Setting
    method: Method
    out: Path
    device: torch.device
    fingerprint: dict[str, Any]
    cost: CostEstimate


#: A run expected to take longer than this many seconds prints its expected duration at the start.
LONG_RUN_S = 60.0


def load_config(cfg: DictConfig | Mapping[str, Any]) -> TrainConfig:
    """The typed :class:`~dmd_torch.config.TrainConfig` of a composed config or a plain mapping
    (whose ``method`` block is typed by its ``name``); one-line errors."""
    block = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    method = dict(block.get("method") or {})
    if method.get("name") not in METHOD_CONFIGS:
        raise ValueError(f"unknown method {method.get('name')!r}; allowed: {', '.join(METHOD_CONFIGS)}")
    typed = to_config(METHOD_CONFIGS[method["name"]], method)
    return to_config(TrainConfig, {**block, "method": OmegaConf.structured(typed)})


def output_directory(config: TrainConfig) -> Path:
    """``output_dir`` if set, else the Hydra run directory."""
    if config.output_dir:
        return Path(config.output_dir).absolute()
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise ValueError("no output directory: set output_dir=PATH (or run through scripts/train.py)")


def prepare(cfg: DictConfig | Mapping[str, Any]) -> Job:
    """Checks the whole configuration and builds the setting and the method (no work yet); refuses
    a run whose estimated peak memory exceeds the memory available (one line)."""
    config = load_config(cfg)
    setting = setting_from_config(config.env)
    method = make_method(config.method)
    method.check_setting(setting)
    device = check_device("device", config.device)
    method_config = {k: v for k, v in dataclasses.asdict(config.method).items() if k != "variant"}
    fingerprint = run_fingerprint(setting.config(), method_config, config.seed, config.heldout_profiles,
                                  config.eval.profiles, config.eval.seed)
    cost = estimate(setting, method, config.heldout_profiles, config.eval.profiles)
    memory = available_memory()
    if device.type == "cpu" and cost.peak_bytes > memory:
        raise ValueError(f"{setting.report_key} with n_agents={setting.n_agents}, size={setting.size} "
                         f"({setting.mdp.num_states:,} states x {setting.mdp.num_actions:,} actions) and method "
                         f"{method.config.variant}: estimated peak memory {cost.peak_bytes / 2**30:.1f} GiB exceeds "
                         f"the {memory / 2**30:.1f} GiB available; allowed: smaller sizes or budgets")
    return Job(config, setting, method, output_directory(config), device, fingerprint, cost)


@contextlib.contextmanager
def run_directory(out: Path) -> Iterator[Path]:
    """Creates the run directory and holds an exclusive lock on it (``.lock``) while the run writes,
    so that two runs never write into one directory; one-line errors where it cannot."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {out} is a file; allowed: a directory, which is created if missing")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise ValueError(f"cannot write into output directory {out}: {err.strerror}; allowed: a writable directory") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(f"another run is writing into {out} (it holds {out / '.lock'}); "
                         "wait for it or choose another output_dir") from None
    try:
        yield out
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted keys where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def finished_result(job: Job) -> RunResult | None:
    """The finished run of this configuration in the run directory (skipped), ``None`` to run.

    Raises:
        ValueError: If the directory holds a finished run of another configuration and ``force`` is
            not set (the message names the keys that differ).
    """
    if job.config.force or not is_complete(job.out):
        return None
    done = read_result(job.out / RESULTS_FILE)
    differ = _differences(done.fingerprint(), job.fingerprint)
    if differ:
        shown = ", ".join(differ[:6]) + (", ..." if len(differ) > 6 else "")
        raise ValueError(f"{job.out} holds a finished run with another configuration (differs in {shown}); "
                         "rerun with force=true to replace it, or choose another output_dir")
    return done


def train(job: Job, logger: RunLogger) -> tuple[AMA, MethodResult]:
    """Sets the process up (threads, allocator), builds the AMA and runs the method."""
    config, setting = job.config, job.setting
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.tune_allocator:
        tune_allocator()
    ama = AMA(setting.to(job.device)).to(job.device)
    gen = torch.Generator().manual_seed(stream_seed(config.seed, "heldout"))
    heldout = setting.checked_sample(config.heldout_profiles, gen).to(job.device)
    return ama, job.method.run(ama, heldout=heldout, seed=config.seed, callback=logger)


def result_of(job: Job, trained: MethodResult, evaluation: EvaluationResult, runtime: float) -> RunResult:
    """The :class:`~dmd_torch.results.RunResult` of a finished run."""
    config, setting = job.config, job.setting
    training = Training(
        method=config.method.name,
        variant=config.method.variant,
        config=job.fingerprint["method"],
        seed=config.seed,
        heldout_profiles=config.heldout_profiles,
        heldout=trained.heldout,
        steps=trained.steps,
        grid_candidates=trained.candidates,
        starts=trained.starts,
        best_start=trained.best_start,
        runtime_seconds=runtime,
        device=str(job.device),
    )
    return RunResult.of(setting, evaluation, training)


def save_outputs(job: Job, ama: AMA, result: RunResult, logger: RunLogger) -> None:
    """Writes the hparams entry, the mechanism, the curve and, last, ``results.json`` (each whole)."""
    ev, tr = result.evaluation, result.training
    assert tr is not None
    hparams = {**{f"env.{k}": v for k, v in job.setting.config().items()}, **job.method.hparams(), "seed": tr.seed}
    logger.add_hparams(hparams, {"mean": ev.mean, "vcg_mean": ev.vcg_mean, "improvement_pct": ev.improvement_pct,
                                 "optimality_ratio": ev.optimality_ratio, "heldout": tr.heldout})
    save_mechanism(ama.cpu(), job.out)
    write_description(ama, job.out)
    title = f"{tr.variant} on {result.setting}, n={result.n_agents}, size={result.size}"
    plot_training_curve(logger, job.out / "training_curve.png", ev, title=title)
    write_result(job.out / RESULTS_FILE, result)


OUTPUT_FILES = ("mechanism.json", "mechanism.pt", *DESCRIPTION_FILES, "training_curve.png", RESULTS_FILE)
"""The files a run writes beside its event files, in the order it writes them."""


def _stamps(directory: Path) -> dict[str, int]:
    """The modification times of the run's output files that exist in ``directory``."""
    return {name: (directory / name).stat().st_mtime_ns for name in OUTPUT_FILES if (directory / name).exists()}


def summary(result: RunResult, better: str, out: Path) -> str:
    """The lines a finished run prints (``better``: ``higher`` or ``lower``)."""
    ev, tr = result.evaluation, result.training
    assert tr is not None
    env = ", ".join(f"{k}={v}" for k, v in result.env.items() if k != "_target_")
    best = "VCG" if tr.best_start < 0 else tr.best_start  # -1: no trained point beat VCG (keep_vcg)
    lines = [
        f"==== {tr.variant} on {result.setting} ({env}) ====",
        f"steps {tr.steps}, grid candidates {tr.grid_candidates}, starts {tr.starts} (best {best}); "
        f"runtime {tr.runtime_seconds:.1f} s",
        f"{result.objective} ({better} is better), {ev.profiles} fresh profiles (seed {ev.seed}):",
        f"  mechanism  {format4(ev.mean)} +- {format4(ev.stderr)}",
        f"  VCG        {format4(ev.vcg_mean)} +- {format4(ev.vcg_stderr)}   improvement "
        + ("n/a (VCG is 0)" if ev.improvement_pct is None else f"{ev.improvement_pct:+.2f}%"),
    ]
    if ev.known_optimum is not None:
        ratio = "n/a" if ev.optimality_ratio is None else format4(ev.optimality_ratio)
        lines.append(f"  optimum    {format4(ev.known_optimum)}             ratio {ratio}")
    lines.append(f"  held-out best ({tr.heldout_profiles} profiles): {format4(tr.heldout)}")
    if not ev.numerically_sound:
        lines.append(f"  WARNING: {NOT_SOUND} {ev.ic_tolerance:.1e} of the rewards")
    lines.append(f"output: {out}")
    return "\n".join(lines)


def evaluate_saved(cfg: EvaluateConfig | DictConfig | Mapping[str, Any]) -> tuple[RunResult, Path]:
    """What ``scripts/evaluate.py`` does: loads a saved mechanism, evaluates it with the paper's
    protocol (VCG and the known optimum on the same profiles), audits its incentives, and writes the
    :class:`~dmd_torch.results.RunResult` (``evaluation.json`` beside the mechanism unless ``out``)
    and the mechanism's description (``mechanism.md`` and ``.png``) beside it.

    Returns:
        The result and the path it was written to.
    """
    config = cfg if isinstance(cfg, EvaluateConfig) else to_config(EvaluateConfig, cfg)
    if config.tune_allocator:
        tune_allocator()
    path = Path(config.mechanism).absolute()
    ama = load_mechanism(path)
    setting = ama.setting
    evaluation = evaluate(ama, profiles=config.profiles, seed=config.seed)
    audit_types = setting.checked_sample(config.audit_profiles, torch.Generator().manual_seed(config.seed + 1))
    audit = ic_audit(ama, audit_types, seed=config.seed + 2)
    result = RunResult.of(setting, evaluation, audit=audit, mechanism=str(path))
    out = Path(config.out).absolute() if config.out else (path if path.is_dir() else path.parent) / "evaluation.json"
    write_description(ama, out.parent)
    write_result(out, result)
    return result, out


def run(cfg: DictConfig | Mapping[str, Any]) -> RunResult:
    """Runs one training job from a composed config and returns its :class:`~dmd_torch.results.RunResult`.

    Raises:
        ValueError: On any bad config value, before work starts.
    """
    t0 = time.perf_counter()
    job = prepare(cfg)
    with run_directory(job.out):
        done = finished_result(job)
        if done is not None:
            print(f"skipping {job.out}: it holds a finished run with this configuration (force=true reruns it)")
            return done
        return _run(job, t0)


def _run(job: Job, t0: float) -> RunResult:
    """Trains, evaluates and saves, in the locked run directory."""
    for stale in job.out.glob("events.out.tfevents.*"):  # a rerun replaces the previous run's curves
        stale.unlink()
    config = job.config
    if job.cost.total_s > LONG_RUN_S:
        print(f"{job.setting.report_key} n={job.setting.n_agents} size={job.setting.size} "
              f"{job.method.config.variant}: {job.cost.describe()}", flush=True)
    logger = RunLogger(job.out, job.method.total_work(), job.setting, tensorboard=config.tensorboard,
                       progress=config.progress, log_every=config.log_every)
    before = _stamps(job.out)
    try:
        ama, trained = train(job, logger)
        logger.bar.set_description("final evaluation")
        evaluation = evaluate(ama, profiles=config.eval.profiles, seed=config.eval.seed)
        result = result_of(job, trained, evaluation, time.perf_counter() - t0)
        save_outputs(job, ama, result, logger)
    except KeyboardInterrupt:
        logger.close()
        files = ", ".join(k for k, v in _stamps(job.out).items() if before.get(k) != v) or "no result files"
        print(f"\ninterrupted; {job.out} holds {files} of this run (results.json is written last)")
        raise
    finally:
        logger.close()
    print(summary(result, job.setting.objective.better, job.out))
    return result
