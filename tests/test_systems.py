"""The Newton systems ``M diag(w) M^T x = r``: the leaves-first solve against the dense one."""

from __future__ import annotations

import pytest
import torch

from dmd_torch.envs import make_env
from dmd_torch.regularized.systems import (
    _small_backward,
    _small_cholesky,
    _small_forward,
    flow_hessian,
    flow_newton_solve,
    leaf_elimination,
    solve_flow_system,
)

DT = torch.float64


def dense(mdp, w: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    return solve_flow_system(flow_hessian(mdp, w), rhs)


def test_small_cholesky_and_triangular_solves_equal_lapack() -> None:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(6, 4, 5, 5, generator=gen, dtype=DT)
    A = X @ X.mT + 0.1 * torch.eye(5, dtype=DT)
    b = torch.randn(6, 4, 5, 3, generator=gen, dtype=DT)
    L, ok = _small_cholesky(A)
    assert ok.all()
    torch.testing.assert_close(L, torch.linalg.cholesky(A), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_small_forward(L, b), torch.linalg.solve_triangular(L, b, upper=False))
    torch.testing.assert_close(_small_backward(L, b), torch.linalg.solve_triangular(L.mT, b, upper=True))
    A[2, 1, 3, 3] = -1.0  # not positive definite
    A[4, 0, 0, 0] = float("nan")
    ok = _small_cholesky(A)[1]
    assert not ok[2, 1] and not ok[4, 0] and int(ok.sum()) == ok.numel() - 2


@pytest.mark.parametrize(("name", "n", "size", "sizes"), (
    ("matching", 4, 3, (43, 55, 5, 3)),
    ("matching", 3, 4, (100, 86, 4, 7)),
    ("seq_sales", 6, 3, None),
))
def test_leaves_first_solves_the_dense_system(name: str, n: int, size: int, sizes) -> None:
    """Same diagonal, and a solution that agrees with the dense one and solves the system as well."""
    mdp = make_env(name, n_agents=n, size=size).mdp
    plan = leaf_elimination(mdp)
    assert plan is not None
    if sizes is not None:
        assert plan.sizes == sizes
    else:  # a history tree: every leaf is a block of its own
        assert plan.sizes[2] == 1
    gen = torch.Generator().manual_seed(1)
    w = torch.exp(3 * torch.randn(7, *mdp.shape, generator=gen, dtype=DT))
    rhs = torch.randn(7, mdp.num_states, generator=gen, dtype=DT)
    x, diag, ok = plan.solve(w, rhs)
    H = flow_hessian(mdp, w)
    assert ok.all()
    torch.testing.assert_close(diag, H.diagonal(dim1=-2, dim2=-1), rtol=0, atol=0)
    ref = dense(mdp, w, rhs)
    torch.testing.assert_close(x, ref, rtol=1e-8, atol=1e-8 * float(ref.abs().max()))
    res = (H @ x.unsqueeze(-1)).squeeze(-1) - rhs
    res_ref = (H @ ref.unsqueeze(-1)).squeeze(-1) - rhs
    assert float(res.abs().max()) <= 10 * float(res_ref.abs().max()) + 1e-12
    x2, diag2 = flow_newton_solve(mdp, w, rhs, chunk_bytes=3 * plan.weight.numel() * 8)  # 3 problems per chunk
    # the same solves in chunks: equal up to the rounding of batched kernels, which may block a batch
    # of 3 differently from one of 7 (seen on AMD EPYC: 1e-16 apart)
    torch.testing.assert_close(x2, x, rtol=1e-12, atol=1e-12 * float(x.abs().max()))
    torch.testing.assert_close(diag2, diag, rtol=0, atol=0)


def test_leaves_first_only_where_it_pays() -> None:
    assert leaf_elimination(make_env("gridworld", n_agents=2, size=3).mdp) is None  # cycles: no leaves
    assert leaf_elimination(make_env("matching", n_agents=2, size=2).mdp) is None  # 15 states
    assert leaf_elimination(make_env("static_auction", n_agents=2, size=2).mdp) is None  # one state
    assert leaf_elimination(make_env("matching", n_agents=4, size=4).mdp).sizes == (222, 231, 5, 7)


def test_a_failed_elimination_is_solved_densely() -> None:
    """A problem whose leaf block is indefinite goes to the dense solve (least squares there)."""
    mdp = make_env("matching", n_agents=4, size=3).mdp
    gen = torch.Generator().manual_seed(2)
    w = torch.rand(4, *mdp.shape, generator=gen, dtype=DT) + 0.5
    rhs = torch.randn(4, mdp.num_states, generator=gen, dtype=DT)
    # a state-action pair leading to several leaves, its weight negative enough that the leaves'
    # diagonal stays positive but their block is indefinite
    leaf = torch.zeros(mdp.num_states, dtype=torch.bool)
    leaf[mdp.levels[0]] = True
    live = mdp.next_probs > 0
    fan = (live.sum(-1) >= 2) & (leaf[mdp.next_states] | ~live).all(-1)
    s, a = (int(i) for i in fan.nonzero()[0])
    kids, probs = mdp.next_states[s, a][live[s, a]], mdp.next_probs[s, a][live[s, a]]
    w[2, s, a] = 0.0
    rest = flow_hessian(mdp, w[2:3])[0].diagonal()[kids]
    w[2, s, a] = -0.9 * float((rest / probs**2).min())
    H = flow_hessian(mdp, w[2:3])[0]
    assert (H.diagonal()[kids] > 0).all() and float(torch.linalg.eigvalsh(H[kids][:, kids])[0]) < 0
    ok = leaf_elimination(mdp).solve(w, rhs)[2]
    assert ok.tolist() == [True, True, False, True]
    x, _ = flow_newton_solve(mdp, w, rhs)
    torch.testing.assert_close(x[2], dense(mdp, w[2:3], rhs[2:3])[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x[[0, 1, 3]], dense(mdp, w[[0, 1, 3]], rhs[[0, 1, 3]]), rtol=1e-9, atol=1e-9)


def test_not_finite_weights_give_nan_not_a_solution() -> None:
    mdp = make_env("matching", n_agents=4, size=3).mdp
    gen = torch.Generator().manual_seed(3)
    w = torch.rand(3, *mdp.shape, generator=gen, dtype=DT) + 0.5
    w[1, 5, 0] = float("nan")
    rhs = torch.randn(3, mdp.num_states, generator=gen, dtype=DT)
    x, _ = flow_newton_solve(mdp, w, rhs)
    assert torch.isnan(x[1]).any() and torch.isfinite(x[[0, 2]]).all()
