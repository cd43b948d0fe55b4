import pytest
import torch

from dmd_torch.mdp import TabularMDP
from tests.helpers import random_discounted_mdp, random_layered_mdp


def test_levels_of_layered_mdp(gen):
    mdp = random_layered_mdp(gen, layers=4, width=2)
    assert mdp.is_acyclic and len(mdp.levels) == 4
    heights = torch.empty(mdp.num_states, dtype=torch.long)
    for h, lvl in enumerate(mdp.levels):
        heights[lvl] = h
    assert torch.equal(heights, torch.tensor([3, 3, 2, 2, 1, 1, 0, 0]))


def test_cyclic_mdp_has_no_levels(gen):
    mdp = random_discounted_mdp(gen)
    assert mdp.levels is None


def test_flow_matrix_matches_dense_kernel(gen):
    mdp = random_discounted_mdp(gen, S=5, A=2, gamma=0.8)
    M = mdp.flow_matrix().to_dense()
    P = mdp.dense_transitions()  # [S, A, S']
    S, A = mdp.shape
    expect = torch.eye(S, dtype=torch.float64).repeat_interleave(A, dim=1) - 0.8 * P.reshape(S * A, S).T
    torch.testing.assert_close(M, expect)
    nu = torch.rand(S, A, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(mdp.inflow(nu), (P * nu[..., None]).sum((0, 1)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gamma=1.0), "cycles"),
        (dict(gamma=1.5), "gamma"),
        (dict(gamma=0.0), "gamma"),
        (dict(mu0=torch.tensor([0.5, 0.2], dtype=torch.float64)), "sum to 1"),
        (dict(probs=torch.tensor([[0.7], [0.7]], dtype=torch.float64) * 2), "more than 1"),
        (dict(labels=["a", "a"]), "unique"),
        (dict(nxt=torch.tensor([[2], [0]])), "0..1"),
    ],
)
def test_bad_mdp_is_rejected(kwargs, match):
    nxt = kwargs.get("nxt", torch.tensor([[1], [0]]))
    probs = kwargs.get("probs", torch.ones(2, 1, dtype=torch.float64))
    mu0 = kwargs.get("mu0", torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=match):
        TabularMDP(kwargs.get("labels", ["a", "b"]), ["go"], nxt, probs, mu0, kwargs.get("gamma", 0.9))


def test_check_rewards_rejects_bad_shapes_and_nan(gen):
    mdp = random_discounted_mdp(gen, S=3, A=2)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, 2\]"):
        mdp.check_rewards(torch.zeros(4, 2, 3))
    with pytest.raises(ValueError, match="NaN or inf"):
        mdp.check_rewards(torch.full((3, 2), float("nan")))
