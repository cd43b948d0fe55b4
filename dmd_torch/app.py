"""The training application behind ``scripts/train.py`` (Hydra): config -> setting, mechanism, method.

:func:`run` validates the whole config first (a bad value raises a one-line ``ValueError`` before any
work), builds the setting (:func:`dmd_torch.envs.make_env`), the AMA (paper, Definition 3.1) and the
outer method (paper, section 4 / Algorithm 1; :mod:`dmd_torch.methods`), optimizes, and evaluates the
result with the paper's protocol (section 5: 10,000 fresh profiles, exact inner solve, VCG on the same
profiles; :func:`dmd_torch.evaluation.evaluate`). The run directory receives:

* TensorBoard event files (training objective, exact held-out evaluations, gradient norm, weights,
  a histogram of the boosts, and the hyperparameters with the final metrics);
* ``results.json`` (setting key of the reference tables, env block, method, seed, evaluation,
  improvement over VCG, known optimum and ratio where known, runtime, steps);
* ``mechanism.json`` and ``mechanism.pt`` (:func:`dmd_torch.storage.save_mechanism`);
* ``training_curve.png``.

Files are written whole (write then rename); ``results.json`` comes last, so its presence marks a
finished run. A run stopped with Ctrl-C closes its event files and leaves no partial result files.
An output directory that already holds a finished run of the same configuration
(:func:`dmd_torch.report.is_complete`) is skipped unless ``force=true``, so a rerun sweep resumes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from dmd_torch.envs import Setting, make_env  # noqa: E402
from dmd_torch.evaluation import EvaluationResult, evaluate  # noqa: E402
from dmd_torch.mechanism import AMA  # noqa: E402
from dmd_torch.methods import Method, MethodResult, StepEvent, make_method  # noqa: E402
from dmd_torch.checks import check_bool, check_int  # noqa: E402
from dmd_torch.methods.base import stream_seed  # noqa: E402
from dmd_torch.report import is_complete  # noqa: E402
from dmd_torch.runtime import tune_allocator  # noqa: E402
from dmd_torch.storage import atomic_write, save_mechanism, write_json  # noqa: E402

__all__ = [
    "run",
    "setting_from_config",
    "method_from_config",
    "method_variant",
    "reference_key",
    "output_directory",
    "RunLogger",
    "plot_training_curve",
]

_ENV_KEYS = ("name", "n_agents", "size", "distribution", "options")


def _plain(cfg: Any) -> Any:
    """A config node as plain Python containers (resolved)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def setting_from_config(env: Mapping[str, Any]) -> Setting:
    """Builds the setting of an ``env`` config block (``name``, ``n_agents``, ``size``,
    ``distribution``, ``options``).

    Raises:
        ValueError: On a missing or unknown key or a bad value (from :func:`make_env`).
    """
    block = dict(_plain(env) or {})
    unknown = sorted(set(block) - set(_ENV_KEYS))
    if unknown:
        raise ValueError(f"unknown env key(s) {', '.join(unknown)}; allowed: {', '.join(_ENV_KEYS)}")
    if "name" not in block:
        raise ValueError("the env block needs a name; allowed: seq_sales, scheduling, gridworld")
    options = block.pop("options", None) or {}
    if not isinstance(options, Mapping):
        raise ValueError(f"env options must be a mapping, got {options!r}")
    name = block.pop("name")
    return make_env(name, **block, **dict(options))


def method_from_config(method: Mapping[str, Any]) -> Method:
    """Builds the method of a ``method`` config block (``name`` plus the method's attributes).

    The optional ``variant`` key (see :func:`method_variant`) labels the run and is not passed on.
    """
    block = dict(_plain(method) or {})
    if "name" not in block:
        raise ValueError("the method block needs a name; allowed: grid, zeroth_order, reg_lp")
    block.pop("variant", None)
    return make_method(block.pop("name"), **block)


def method_variant(method: Mapping[str, Any]) -> str:
    """The run's method label: the block's ``variant`` (e.g. ``reg_lp_tuned``, a configuration of
    ``reg_lp``), else its ``name``. It names the sweep's output directory and the report's column.
    """
    block = dict(_plain(method) or {})
    variant = block.get("variant")
    if variant is None:
        return str(block.get("name"))
    if not isinstance(variant, str) or not variant or not all(ch.isalnum() or ch in "_-." for ch in variant):
        raise ValueError(f"method.variant must be a non-empty name of letters, digits, '_', '-' or '.', got {variant!r}")
    return variant


def reference_key(setting: Setting) -> str:
    """The ``setting`` key of the paper's reference tables (e.g. ``seq_sales_sym``, ``gridworld``)."""
    if setting.name in ("seq_sales", "scheduling"):
        key = f"{setting.name}_{'sym' if setting.distribution == 'symmetric' else 'asym'}"
        return key + ("_clamped" if getattr(setting, "clamped", False) else "")
    if setting.name == "gridworld":
        return "gridworld" if setting.distribution == "one_cell" else f"gridworld_{setting.distribution}"
    return setting.name


def output_directory(cfg: Mapping[str, Any]) -> Path:
    """``cfg.output_dir`` if set, else the Hydra run directory."""
    if cfg.get("output_dir"):
        return Path(str(cfg["output_dir"])).absolute()
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise ValueError("no output directory: set output_dir=PATH (or run through scripts/train.py)")


def _device(name: Any) -> torch.device:
    try:
        device = torch.device(str(name))
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; allowed: cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} is not available here; allowed: cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}; allowed: cpu, cuda, cuda:N")
    return device


class RunLogger:
    """The callback of a run: TensorBoard scalars/histograms, a tqdm bar, and the curve data.

    Args:
        directory: TensorBoard log directory (the run directory).
        total: Units of work of the run (``Method.total_work()``).
        setting: The setting (objective direction, whether weights are optimized).
        tensorboard: Write TensorBoard event files.
        progress: Show the progress bar.
    """

    def __init__(self, directory: Path, total: int, setting: Setting, tensorboard: bool = True, progress: bool = True) -> None:
        self.setting = setting
        self.writer = SummaryWriter(log_dir=str(directory)) if tensorboard else None
        self.bar = tqdm(total=total, disable=not progress, dynamic_ncols=True, desc="train", unit="step")
        self.train: list[tuple[int, int, float]] = []  # (step, start, objective)
        self.evals: list[tuple[int, int, float]] = []  # (step, start, heldout)
        self.grid: list[tuple[int, float]] = []  # (candidates, best score)
        self.best: float | None = None

    def __call__(self, ev: StepEvent) -> None:
        w = self.writer
        if ev.phase == "grid":
            self.grid.append((ev.step, float(ev.objective)))
            if w is not None:
                w.add_scalar("grid/best_score", ev.objective, ev.step)
            if ev.heldout is not None:  # the grid's best candidate, evaluated on the held-out sample
                self.best = ev.best
                if w is not None:
                    w.add_scalar("grid/heldout", ev.heldout, ev.step)
                    w.add_histogram("params/boosts", ev.ama.boosts.detach().cpu(), ev.step)
                    self._weights(ev)
            self.bar.set_description("grid", refresh=False)
            self.bar.set_postfix(best_grid=f"{ev.objective:.4f}", refresh=False)
        elif ev.phase == "train":
            self.train.append((ev.step, ev.start, float(ev.objective)))
            if w is not None:
                w.add_scalar("train/objective", ev.objective, ev.step)
                w.add_scalar("train/grad_norm", ev.grad_norm, ev.step)
                if self.setting.optimize_weights:
                    self._weights(ev)
            self.bar.set_description(f"train start {ev.start}", refresh=False)
            self.bar.set_postfix(obj=f"{ev.objective:.4f}", best=self._fmt(self.best), refresh=False)
        elif ev.phase == "eval":
            self.evals.append((ev.step, ev.start, float(ev.heldout)))
            self.best = ev.best
            if w is not None:
                w.add_scalar("heldout/objective", ev.heldout, ev.step)
                w.add_scalar("heldout/best", ev.best, ev.step)
                w.add_histogram("params/boosts", ev.ama.boosts.detach().cpu(), ev.step)
                self._weights(ev)
            self.bar.set_postfix(heldout=f"{ev.heldout:.4f}", best=self._fmt(self.best), refresh=False)
        self.bar.update(ev.advance)

    @staticmethod
    def _fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    def _weights(self, ev: StepEvent) -> None:
        assert self.writer is not None
        for i, wi in enumerate(ev.ama.weights.detach().cpu().tolist()):
            self.writer.add_scalar(f"params/weight_{i + 1}", wi, ev.step)

    def add_hparams(self, hparams: dict[str, Any], metrics: dict[str, float | None]) -> None:
        """Writes the hyperparameters with the final metrics (TensorBoard's HParams tab)."""
        if self.writer is None:
            return
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        mt = {f"hparam/{k}": float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}
        self.writer.add_hparams(hp, mt, run_name=".")

    def close(self) -> None:
        """Flushes and closes the event file and the progress bar."""
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def plot_training_curve(
    logger: RunLogger, path: Path, evaluation: EvaluationResult | None = None, title: str = ""
) -> None:
    """Writes ``training_curve.png``: training estimates, held-out evaluations, grid progress and the
    VCG / known-optimum / final levels of the evaluation."""
    panels = [p for p in ("grid", "train") if getattr(logger, p)]
    panels = panels or ["train"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    label = logger.setting.objective
    for ax, panel in zip(axes[0], panels):
        if panel == "grid":
            x, y = zip(*logger.grid)
            ax.plot(x, y, color="tab:purple", label="best grid score (training profiles)")
            ax.set_xlabel("grid candidates scored")
        else:
            if logger.train:
                steps = torch.tensor([s for s, _, _ in logger.train], dtype=torch.float64)
                obj = torch.tensor([o for _, _, o in logger.train], dtype=torch.float64)
                start = torch.tensor([k for _, k, _ in logger.train])
                ax.plot(steps, obj, color="tab:blue", alpha=0.25, lw=0.8, label="training estimate (mini-batch)")
                for k in start.unique().tolist():  # moving average within each start
                    sel = start == k
                    width = max(1, min(50, int(sel.sum()) // 10))
                    if width > 1:
                        smooth = torch.nn.functional.avg_pool1d(obj[sel][None, None], width, 1).flatten()
                        ax.plot(steps[sel][width - 1 :], smooth, color="tab:blue", lw=1.5,
                                label=f"moving average ({width})" if k == start[0] else None)
            if logger.evals:
                starts = sorted({s for _, s, _ in logger.evals})
                for s in starts:
                    pts = [(x, h) for x, st, h in logger.evals if st == s]
                    x, y = zip(*pts)
                    ax.plot(x, y, "o-", ms=3, color="tab:orange" if len(starts) == 1 else None,
                            label="held-out (exact)" if len(starts) == 1 else f"held-out, start {s}")
            ax.set_xlabel("gradient step")
        if evaluation is not None:
            ax.axhline(evaluation.vcg_mean, color="gray", ls="--", lw=1, label=f"VCG {_f4(evaluation.vcg_mean)}")
            ax.axhline(evaluation.mean, color="tab:green", ls="-", lw=1, label=f"final {_f4(evaluation.mean)}")
            if evaluation.known_optimum is not None:
                ax.axhline(evaluation.known_optimum, color="k", ls=":", lw=1,
                           label=f"known optimum {_f4(evaluation.known_optimum)}")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _f4(x: float) -> str:
    """``x`` to 4 decimals, without a negative zero."""
    return f"{round(x, 4) + 0.0:.4f}"


def _summary(results: dict[str, Any], out: Path) -> str:
    r = results
    better = "higher" if r["maximize"] else "lower"
    lines = [
        f"==== {r.get('variant', r['method'])} on {r['setting']} ({', '.join(f'{k}={v}' for k, v in r['env'].items())}) ====",
        f"steps {r['steps']}, grid candidates {r['grid_candidates']}, starts {r['starts']} (best {r['best_start']}); "
        f"runtime {r['runtime_seconds']:.1f} s",
        f"{r['objective']} ({better} is better), {r['eval_profiles']} fresh profiles (seed {r['eval_seed']}):",
        f"  mechanism  {_f4(r['mean'])} +- {_f4(r['stderr'])}",
        f"  VCG        {_f4(r['vcg_mean'])} +- {_f4(r['vcg_stderr'])}   improvement "
        + ("n/a (VCG is 0)" if r["improvement_pct"] is None else f"{r['improvement_pct']:+.2f}%"),
    ]
    if r["known_optimum"] is not None:
        ratio = "n/a" if r["optimality_ratio"] is None else _f4(r["optimality_ratio"])
        lines.append(f"  optimum    {_f4(r['known_optimum'])}             ratio {ratio}")
    lines.append(f"  held-out best ({r['heldout_profiles']} profiles): {_f4(r['heldout'])}")
    lines.append(f"output: {out}")
    return "\n".join(lines)


def run(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Runs one training job from a composed config and returns the content of ``results.json``.

    Args:
        cfg: The composed config (``conf/config.yaml`` with its ``env`` and ``method`` groups).

    Raises:
        ValueError: On any bad config value, before work starts.
    """
    t0 = time.perf_counter()
    cfg = OmegaConf.create(_plain(cfg)) if not isinstance(cfg, DictConfig) else cfg
    # ---- validate everything first
    seed = check_int("seed", cfg.get("seed", 0), minimum=0)
    setting = setting_from_config(cfg.env)
    method = method_from_config(cfg.method)
    variant = method_variant(cfg.method)
    method.check_setting(setting)
    heldout_n = check_int("heldout_profiles", cfg.get("heldout_profiles", 2000))
    eval_cfg = cfg.get("eval") or {}
    eval_profiles = check_int("eval.profiles", eval_cfg.get("profiles", 10_000), minimum=2)
    eval_seed = check_int("eval.seed", eval_cfg.get("seed", 0), minimum=0)
    device = _device(cfg.get("device", "cpu"))
    threads = cfg.get("threads")
    if threads is not None:
        check_int("threads", threads)
    allocator = check_bool("tune_allocator", cfg.get("tune_allocator", True))
    tensorboard, progress = bool(cfg.get("tensorboard", True)), bool(cfg.get("progress", True))
    out = output_directory(cfg)
    env_options = dict(_plain(cfg.env).get("options") or {})
    fingerprint = {
        "env": setting.env_block(),
        "env_options": env_options,
        "method_config": {k: v for k, v in (_plain(cfg.method) or {}).items() if k != "variant"},  # the label is no setting
        "seed": seed,
        "heldout_profiles": heldout_n,
        "eval_profiles": eval_profiles,
        "eval_seed": eval_seed,
    }
    if not cfg.get("force", False) and is_complete(out, fingerprint):
        done = json.loads((out / "results.json").read_text())
        print(f"skipping {out}: it holds a finished run with this configuration (force=true reruns it)")
        return done
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("events.out.tfevents.*"):  # a rerun replaces the previous run's curves
        stale.unlink()

    # ---- build
    if threads is not None:
        torch.set_num_threads(threads)
    if allocator:
        tune_allocator()
    if device.type != "cpu":
        setting.mdp = setting.mdp.to(device)
    ama = AMA(setting).to(device)
    heldout = setting.sample_types(heldout_n, torch.Generator().manual_seed(stream_seed(seed, "heldout"))).to(device)
    logger = RunLogger(out, method.total_work(), setting, tensorboard=tensorboard, progress=progress)
    try:
        result: MethodResult = method.run(ama, heldout=heldout, seed=seed, callback=logger)
        logger.bar.set_description("final evaluation")
        evaluation = evaluate(ama, profiles=eval_profiles, seed=eval_seed)
        runtime = time.perf_counter() - t0
        results: dict[str, Any] = {
            "setting": reference_key(setting),
            **fingerprint,
            "method": method.name,
            "variant": variant,
            "objective": setting.objective,
            "maximize": setting.maximize,
            "mean": evaluation.mean,
            "stderr": evaluation.stderr,
            "vcg_mean": evaluation.vcg_mean,
            "vcg_stderr": evaluation.vcg_stderr,
            "improvement_pct": evaluation.improvement_pct,
            "known_optimum": evaluation.known_optimum,
            "known_optimum_stderr": evaluation.known_optimum_stderr,
            "optimality_ratio": evaluation.optimality_ratio,
            "heldout": result.heldout,
            "steps": result.steps,
            "grid_candidates": result.candidates,
            "starts": getattr(getattr(method, "multistart", None), "starts", 1),
            "best_start": result.best_start,
            "runtime_seconds": runtime,
            "device": str(device),
        }
        hparams = {**{f"env.{k}": v for k, v in setting.env_block().items()}, **method.hparams(), "seed": seed}
        logger.add_hparams(
            hparams,
            {
                "mean": evaluation.mean,
                "vcg_mean": evaluation.vcg_mean,
                "improvement_pct": evaluation.improvement_pct,
                "optimality_ratio": evaluation.optimality_ratio,
                "heldout": result.heldout,
            },
        )
        save_mechanism(ama.cpu(), out)
        plot_training_curve(logger, out / "training_curve.png", evaluation, title=f"{variant} on {reference_key(setting)}, n={setting.n_agents}, size={setting.size}")
        write_json(out / "results.json", results)
    except KeyboardInterrupt:
        logger.close()
        print(f"\ninterrupted; no result files were written to {out}")
        raise
    finally:
        logger.close()
    print(_summary(results, out))
    return results
