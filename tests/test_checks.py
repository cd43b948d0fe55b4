"""Tests of dmd_torch.checks: the one-line input checks and the finiteness test of every step."""

from __future__ import annotations

import pytest
import torch

from dmd_torch.checks import all_finite, check_choice, check_finite, check_float, check_int


def test_all_finite_sees_nan_and_inf_and_not_overflow():
    big = torch.full((4,), 1e308, dtype=torch.float64)  # finite entries whose sum overflows to inf
    assert all_finite(big) and all_finite(-big) and all_finite(torch.zeros(0))
    assert all_finite(torch.tensor([1.0, -2.0, 3.5]))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.tensor([1.0, bad, 2.0], dtype=torch.float64)
        assert not all_finite(x) and not all_finite(torch.cat([big, x]))
    assert not all_finite(torch.tensor([float("inf"), -float("inf")]))  # the sum is NaN, the entries inf
    with pytest.raises(ValueError, match="^r contains NaN or inf$"):
        check_finite("r", torch.tensor([0.0, float("nan")]))


def test_scalar_checks_name_the_value_and_what_is_allowed():
    assert check_int("steps", 3) == 3 and check_float("lr", 1) == 1.0 and check_choice("init", "vcg", ("vcg",)) == "vcg"
    with pytest.raises(ValueError, match=r"^steps must be an integer >= 1, got True$"):
        check_int("steps", True)
    with pytest.raises(ValueError, match=r"^lr must be a finite number > 0, got inf$"):
        check_float("lr", float("inf"))
    with pytest.raises(ValueError, match=r"^unknown init 'x'; allowed: uniform, vcg$"):
        check_choice("init", "x", ("uniform", "vcg"))
