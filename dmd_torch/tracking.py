"""What a training run shows while it runs and leaves behind: TensorBoard, a progress bar, the curve.

:class:`RunLogger` is the callback of a run (:data:`~dmd_torch.methods.Callback`): it writes
TensorBoard scalars (training objective, exact held-out evaluations, gradient norm, weights), a
histogram of the boosts and the hyperparameters with the final metrics, drives a tqdm bar, and
keeps the curve data for :func:`plot_training_curve` (``training_curve.png``). Its writes run with
Ctrl-C deferred (:func:`~dmd_torch.runtime.interrupts_deferred`), so an interrupted run can still
close its event file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from dmd_torch.envs.base import Setting  # noqa: E402
from dmd_torch.evaluation import EvaluationResult  # noqa: E402
from dmd_torch.methods.base import StepEvent  # noqa: E402
from dmd_torch.checks import check_int  # noqa: E402
from dmd_torch.files import atomic_write  # noqa: E402
from dmd_torch.runtime import interrupts_deferred  # noqa: E402

__all__ = ["RunLogger", "plot_training_curve", "format4"]


class RunLogger:
    """The callback of a run: TensorBoard scalars/histograms, a tqdm bar, and the curve data.

    Args:
        directory: TensorBoard log directory (the run directory).
        total: Units of work of the run (``Method.total_work()``).
        setting: The setting (objective direction, whether weights are optimized).
        tensorboard: Write TensorBoard event files.
        progress: Show the progress bar.
        log_every: Training steps per TensorBoard point and bar refresh (each point: the means of
            the steps of one start since the last point, written at the window's last step; a start's
            last, shorter window is written when the next start begins or the logger closes);
            held-out evaluations and grid batches are all written.
    """

    def __init__(self, directory: Path, total: int, setting: Setting, tensorboard: bool = True, progress: bool = True,
                 log_every: int = 1) -> None:
        self.setting = setting
        self.log_every = check_int("log_every", log_every)
        self._window: list[tuple[float, float]] = []  # (objective, grad norm) of the steps not yet written
        self._last: StepEvent | None = None  # the window's last training step
        self.writer = SummaryWriter(log_dir=str(directory)) if tensorboard else None
        self.bar = tqdm(total=total, disable=not progress, dynamic_ncols=True, desc="train", unit="step")
        self.train: list[tuple[int, int, float]] = []  # (step, start, objective)
        self.evals: list[tuple[int, int, float]] = []  # (step, start, heldout)
        self.grid: list[tuple[int, float]] = []  # (candidates, best score)
        self.best: float | None = None

    def __call__(self, ev: StepEvent) -> None:
        with interrupts_deferred():
            self._record(ev)

    def _record(self, ev: StepEvent) -> None:
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
            objective = float(ev.objective)
            self.train.append((ev.step, ev.start, objective))
            if self._last is not None and self._last.start != ev.start:
                self._write_window()  # a window never mixes two starts
            self._window.append((objective, float(ev.grad_norm)))
            self._last = ev
            if ev.step % self.log_every == 0:
                self._write_window()
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

    def _write_window(self) -> None:
        """Writes the means of the window's steps at its last step, and empties it."""
        ev = self._last
        if not self._window or ev is None:
            return
        mean_obj = sum(x for x, _ in self._window) / len(self._window)
        w = self.writer
        if w is not None:
            w.add_scalar("train/objective", mean_obj, ev.step)
            w.add_scalar("train/grad_norm", sum(g for _, g in self._window) / len(self._window), ev.step)
            if self.setting.optimize_weights:
                self._weights(ev)
        self._window.clear()
        self.bar.set_description(f"train start {ev.start}", refresh=False)
        self.bar.set_postfix(obj=f"{mean_obj:.4f}", best=self._fmt(self.best), refresh=False)

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
        with interrupts_deferred():
            self.writer.add_hparams(hp, mt, run_name=".")

    def close(self) -> None:
        """Writes the last window, flushes and closes the event file and the progress bar."""
        with interrupts_deferred():
            self._write_window()
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
    label = logger.setting.objective.name
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
            ax.axhline(evaluation.vcg_mean, color="gray", ls="--", lw=1, label=f"VCG {format4(evaluation.vcg_mean)}")
            ax.axhline(evaluation.mean, color="tab:green", ls="-", lw=1, label=f"final {format4(evaluation.mean)}")
            if evaluation.known_optimum is not None:
                ax.axhline(evaluation.known_optimum, color="k", ls=":", lw=1,
                           label=f"known optimum {format4(evaluation.known_optimum)}")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def format4(x: float) -> str:
    """``x`` to 4 decimals, without a negative zero."""
    return f"{round(x, 4) + 0.0:.4f}"

