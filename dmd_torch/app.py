"""The training application behind ``scripts/train.py`` (Hydra): config -> setting, mechanism, method.

:func:`run` is a short sequence of named steps:

1. :func:`prepare`: the whole config is checked (types by Hydra's structured configs, ranges by the
   dataclasses, the setting by its constructor, the method against the setting) and the setting and
   method are built: a bad value raises a one-line ``ValueError`` before any work;
2. :func:`finished_result`: a run directory that already holds a finished run of the same
   configuration is skipped unless ``force=true``, so a rerun sweep resumes;
3. :func:`train`: the method optimizes the AMA (paper, Definition 3.1; section 4, Algorithm 1),
   logging to TensorBoard (:class:`~dmd_torch.tracking.RunLogger`);
4. :func:`dmd_torch.evaluation.evaluate`: the paper's protocol (section 5: 10,000 fresh profiles,
   exact inner solve, VCG and the known optimum on the same profiles);
5. :func:`save_outputs`: ``mechanism.json`` and ``.pt``, ``training_curve.png`` and, last,
   ``results.json`` (:class:`~dmd_torch.results.RunResult`), each written whole (write, then rename),
   so the presence of ``results.json`` marks a finished run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dmd_torch.config import METHOD_CONFIGS, TrainConfig, to_config
from dmd_torch.envs import Setting, setting_from_config
from dmd_torch.evaluation import EvaluationResult, evaluate
from dmd_torch.mechanism import AMA
from dmd_torch.methods import Method, MethodResult, make_method
from dmd_torch.methods.base import stream_seed
from dmd_torch.results import RESULTS_FILE, RunResult, Training, is_complete, read_result, run_fingerprint, write_result
from dmd_torch.runtime import tune_allocator
from dmd_torch.storage import save_mechanism
from dmd_torch.tracking import RunLogger, format4, plot_training_curve

__all__ = ["Job", "run", "load_config", "prepare", "finished_result", "train", "save_outputs", "output_directory"]


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
    """

    config: TrainConfig
    setting: Setting
    method: Method
    out: Path
    device: torch.device
    fingerprint: dict[str, Any]


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


def _device(name: str) -> torch.device:
    try:
        device = torch.device(str(name))
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; allowed: cpu, cuda, cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}; allowed: cpu, cuda, cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} is not available here; allowed: cpu")
    return device


def prepare(cfg: DictConfig | Mapping[str, Any]) -> Job:
    """Checks the whole configuration and builds the setting and the method (no work yet)."""
    config = load_config(cfg)
    setting = setting_from_config(config.env)
    method = make_method(config.method)
    method.check_setting(setting)
    device = _device(config.device)
    method_config = {k: v for k, v in dataclasses.asdict(config.method).items() if k != "variant"}
    fingerprint = run_fingerprint(setting.config(), method_config, config.seed, config.heldout_profiles,
                                  config.eval.profiles, config.eval.seed)
    return Job(config, setting, method, output_directory(config), device, fingerprint)


def finished_result(job: Job) -> RunResult | None:
    """The finished run of this configuration in the run directory, unless ``force`` is set."""
    if job.config.force or not is_complete(job.out, job.fingerprint):
        return None
    return read_result(job.out / RESULTS_FILE)


def train(job: Job, logger: RunLogger) -> tuple[AMA, MethodResult]:
    """Sets the process up (threads, allocator), builds the AMA and runs the method."""
    config, setting = job.config, job.setting
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.tune_allocator:
        tune_allocator()
    if job.device.type != "cpu":
        setting.mdp = setting.mdp.to(job.device)
    ama = AMA(setting).to(job.device)
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
    title = f"{tr.variant} on {result.setting}, n={result.n_agents}, size={result.size}"
    plot_training_curve(logger, job.out / "training_curve.png", ev, title=title)
    write_result(job.out / RESULTS_FILE, result)


OUTPUT_FILES = ("mechanism.json", "mechanism.pt", "training_curve.png", RESULTS_FILE)
"""The files a run writes beside its event files, in the order it writes them."""


def _stamps(directory: Path) -> dict[str, int]:
    """The modification times of the run's output files that exist in ``directory``."""
    return {name: (directory / name).stat().st_mtime_ns for name in OUTPUT_FILES if (directory / name).exists()}


def summary(result: RunResult, out: Path) -> str:
    """The lines a finished run prints."""
    ev, tr = result.evaluation, result.training
    assert tr is not None
    env = ", ".join(f"{k}={v}" for k, v in result.env.items() if k != "_target_")
    lines = [
        f"==== {tr.variant} on {result.setting} ({env}) ====",
        f"steps {tr.steps}, grid candidates {tr.grid_candidates}, starts {tr.starts} (best {tr.best_start}); "
        f"runtime {tr.runtime_seconds:.1f} s",
        f"{result.objective} ({'higher' if result.maximize else 'lower'} is better), {ev.profiles} fresh profiles (seed {ev.seed}):",
        f"  mechanism  {format4(ev.mean)} +- {format4(ev.stderr)}",
        f"  VCG        {format4(ev.vcg_mean)} +- {format4(ev.vcg_stderr)}   improvement "
        + ("n/a (VCG is 0)" if ev.improvement_pct is None else f"{ev.improvement_pct:+.2f}%"),
    ]
    if ev.known_optimum is not None:
        ratio = "n/a" if ev.optimality_ratio is None else format4(ev.optimality_ratio)
        lines.append(f"  optimum    {format4(ev.known_optimum)}             ratio {ratio}")
    lines.append(f"  held-out best ({tr.heldout_profiles} profiles): {format4(tr.heldout)}")
    lines.append(f"output: {out}")
    return "\n".join(lines)


def run(cfg: DictConfig | Mapping[str, Any]) -> RunResult:
    """Runs one training job from a composed config and returns its :class:`~dmd_torch.results.RunResult`.

    Raises:
        ValueError: On any bad config value, before work starts.
    """
    t0 = time.perf_counter()
    job = prepare(cfg)
    done = finished_result(job)
    if done is not None:
        print(f"skipping {job.out}: it holds a finished run with this configuration (force=true reruns it)")
        return done
    job.out.mkdir(parents=True, exist_ok=True)
    for stale in job.out.glob("events.out.tfevents.*"):  # a rerun replaces the previous run's curves
        stale.unlink()
    config = job.config
    logger = RunLogger(job.out, job.method.total_work(), job.setting, tensorboard=config.tensorboard,
                       progress=config.progress)
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
    print(summary(result, job.out))
    return result
