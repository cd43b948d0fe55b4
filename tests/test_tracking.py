"""Tests of dmd_torch.tracking: what a run writes to TensorBoard."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dmd_torch import AMA, make_env
from dmd_torch.methods import StepEvent
from dmd_torch.tracking import RunLogger


def test_training_points_are_the_means_of_each_window(tmp_path):
    setting = make_env("seq_sales", n_agents=2, size=2)
    ama = AMA(setting)
    logger = RunLogger(tmp_path, 6, setting, tensorboard=True, progress=False, log_every=3)
    for step in range(1, 7):
        logger(StepEvent("train", step, 0, 1, ama, objective=float(step), grad_norm=10.0 * step))
    logger(StepEvent("eval", 6, 0, 0, ama, heldout=0.5, best=0.5))
    logger.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/objective")] == [(3, 2.0), (6, 5.0)]
    assert [e.value for e in acc.Scalars("train/grad_norm")] == [20.0, 50.0]
    assert [e.value for e in acc.Scalars("heldout/objective")] == [0.5]
    assert len(logger.train) == 6  # the curve keeps every step
    with pytest.raises(ValueError, match="log_every"):
        RunLogger(tmp_path, 1, setting, tensorboard=False, progress=False, log_every=0)


def test_a_window_never_mixes_two_starts(tmp_path):
    """Starts of 4 steps at log_every = 3: each start's last step closes a shorter window of its own."""
    setting = make_env("seq_sales", n_agents=2, size=2)
    ama = AMA(setting)
    logger = RunLogger(tmp_path, 8, setting, tensorboard=True, progress=False, log_every=3)
    for step in range(1, 9):
        start = (step - 1) // 4
        logger(StepEvent("train", step, start, 1, ama, objective=float(step), grad_norm=1.0))
    logger.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    # start 0: steps 1-3 (point at 3), then 4 alone; start 1: 5-6 (point at 6), then 7-8 at close
    assert [(e.step, e.value) for e in acc.Scalars("train/objective")] == [(3, 2.0), (4, 4.0), (6, 5.5), (8, 7.5)]


class _CtrlCInside:
    """A SummaryWriter whose ``add_scalar`` receives a Ctrl-C as it starts."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.written: list[str] = []

    def add_scalar(self, tag: str, *args: Any, **kwargs: Any) -> None:
        signal.raise_signal(signal.SIGINT)
        self.writer.add_scalar(tag, *args, **kwargs)
        self.written.append(tag)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)


def test_a_ctrl_c_during_a_write_is_raised_after_it(tmp_path):
    """TensorBoard's writer is never interrupted midway (an interrupted write could hang its close)."""
    setting = make_env("seq_sales", n_agents=2, size=2)
    logger = RunLogger(tmp_path, 1, setting, tensorboard=True, progress=False)
    writer = logger.writer = _CtrlCInside(logger.writer)
    with pytest.raises(KeyboardInterrupt):
        logger(StepEvent("train", 1, 0, 1, AMA(setting), objective=0.25, grad_norm=1.0))
    logger.writer = writer.writer
    assert writer.written == ["train/objective", "train/grad_norm"]  # both writes finished first
    logger.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/objective")] == [(1, 0.25)]
