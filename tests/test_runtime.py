"""Tests of dmd_torch.runtime: the allocator settings of the library's scripts."""

from __future__ import annotations

import platform
import resource
import signal
import sys

import pytest
import torch

from dmd_torch import runtime

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)


def _faults_per_round(rounds: int = 4) -> float:
    """Minor page faults per round of allocating, touching and freeing 40 MB of 8 MB tensors."""
    before = 0
    for k in range(rounds + 2):
        if k == 2:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt  # two rounds warm up
        blocks = [torch.ones(2**20, dtype=torch.float64) for _ in range(5)]
        del blocks
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds


@glibc
def test_tuned_allocator_reuses_freed_memory(monkeypatch):
    for name in runtime._ENV:
        monkeypatch.delenv(name, raising=False)
    assert runtime.tune_allocator() is True
    # 40 MB freed at the top of the heap stays there: touching it again faults (almost) nothing,
    # where trimming would fault in all 10,000 of its pages every round (the least of three
    # measurements: another process's memory pressure can add faults to one of them)
    assert min(_faults_per_round() for _ in range(3)) < 500


@glibc
def test_environment_settings_are_kept(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert runtime.tune_allocator() is False


def test_exact_threads_policy_scopes_and_restores():
    """The exact entry points run with one thread where a batch is small, and give the caller's
    thread count back; the policy can be switched off."""
    from dmd_torch import AMA, evaluate, make_env

    before = torch.get_num_threads()
    setting = make_env("seq_sales", n_agents=2, size=2)
    try:
        torch.set_num_threads(2)
        with runtime.exact_threads(setting):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        runtime.set_exact_threads(None)
        with runtime.exact_threads(setting):
            assert torch.get_num_threads() == 2
        runtime.set_exact_threads(1)
        big = make_env("static_auction", n_agents=3, size=10)  # (n + 1) S A = 4^11 > one batch: caller's threads
        with runtime.exact_threads(big):
            assert torch.get_num_threads() == 2
        evaluate(AMA(setting), profiles=20)
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="exact threads must be a positive int or None"):
            runtime.set_exact_threads(0)
    finally:
        runtime.set_exact_threads(1)
        torch.set_num_threads(before)


def test_a_ctrl_c_in_a_deferred_block_is_raised_when_it_ends():
    handler = signal.getsignal(signal.SIGINT)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with runtime.interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            done.append("rest of the block")
    assert done == ["rest of the block"] and signal.getsignal(signal.SIGINT) is handler
    with runtime.interrupts_deferred():  # no Ctrl-C: nothing raised
        pass
    assert signal.getsignal(signal.SIGINT) is handler
