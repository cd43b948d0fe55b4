"""The closed-form backend ``tree``: the regularized follower problem on a history tree.

On a finite-horizon MDP whose states form a tree rooted at the start state (deterministic
transitions, one parent state-action pair per state, all leaves at the same depth; e.g. states
that are histories, as in sequential sales and scheduling) the joint entropy of the occupancy
weighs the policy entropy at ``s`` by the number ``d(s)`` of decisions left, so the program of the
paper's equation 13 is solved exactly by backward induction at temperature ``alpha d(s)``:
``G(s) = alpha d(s) logsumexp_a((c(s, a) + G(child(s, a))) / (alpha d(s)))``, the policy is the
matching softmax, and ``nu`` follows by pushing the flow forward. Plain autograd differentiates it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dmd_torch.mdp import TabularMDP
from dmd_torch.regularized.base import Backend
from dmd_torch.regularized.flow import mdp_cache

__all__ = ["TreeBackend", "tree_applicable"]


@dataclass(frozen=True)
class _Tree:
    """Structure of a history tree: ``child[s, a]`` and the flat ``(s, a)`` index of each parent."""

    child: torch.Tensor  # [S, A] long (0 where terminal)
    parent_sa: torch.Tensor  # [S] long, -1 for the root


def _tree_structure(mdp: TabularMDP) -> _Tree | str:
    """The tree structure of ``mdp``, or a string saying why it is not a history tree."""
    cache = mdp_cache(mdp)
    if "tree" in cache:
        return cache["tree"]
    cache["tree"] = out = _build_tree(mdp)
    return out


def _build_tree(mdp: TabularMDP) -> _Tree | str:
    S, A = mdp.shape
    if mdp.levels is None or mdp.gamma != 1.0:
        return "it is not a finite-horizon MDP (acyclic with gamma = 1)"
    pos = mdp.next_probs > 0
    if (pos.sum(-1) > 1).any() or ((mdp.next_probs[pos] - 1.0).abs() > 1e-12).any():
        return "its transitions are not deterministic"
    has_child = pos.any(-1)  # [S, A]
    k = pos.to(torch.int8).argmax(-1, keepdim=True)
    child = mdp.next_states.gather(-1, k).squeeze(-1) * has_child
    height = mdp.heights
    assert height is not None
    inner = height > 0
    if not has_child[inner].all() or has_child[~inner].any():
        return "some state has both terminal and non-terminal actions"
    if (height[child[inner]] != (height[inner] - 1).unsqueeze(-1)).any():
        return "its leaves are not all at the same depth"
    n_parents = torch.bincount(child[has_child], minlength=S)
    roots = (n_parents == 0).nonzero().flatten()
    if (n_parents > 1).any():
        return "some state has more than one parent (state, action)"
    if roots.numel() != 1 or float(mdp.mu0[roots[0]]) < 1.0 - 1e-12:
        return "mu0 is not a point mass on its only parentless state"
    parent_sa = torch.full((S,), -1, dtype=torch.long, device=mdp.device)
    sa = torch.arange(S * A, device=mdp.device).reshape(S, A)
    parent_sa[child[has_child]] = sa[has_child]
    return _Tree(child=child, parent_sa=parent_sa)


def tree_applicable(mdp: TabularMDP) -> bool:
    """Whether the closed-form ``"tree"`` backend applies to ``mdp``.

    It does for finite-horizon MDPs (``gamma = 1``) with deterministic transitions whose states
    form a tree rooted at the start state (``mu0`` a point mass there, every other state with
    exactly one parent state-action pair) with all leaves at the same depth, e.g. MDPs whose
    states are histories.
    """
    return isinstance(_tree_structure(mdp), _Tree)


class TreeBackend(Backend):
    """Closed form on history trees (module docstring); takes no options."""

    name = "tree"

    @classmethod
    def why_not(cls, mdp: TabularMDP) -> str | None:
        why = _tree_structure(mdp)
        return None if isinstance(why, _Tree) else why

    def solve(
        self, mdp: TabularMDP, c: torch.Tensor, alpha: float, lead: tuple[int, ...], group: int = 1
    ) -> torch.Tensor:
        """One vectorized step per height level, backward for ``G`` and the policy, forward for ``nu``."""
        tree = _tree_structure(mdp)
        assert isinstance(tree, _Tree)
        assert mdp.levels is not None
        B, S, A = c.shape
        G = c.new_zeros(B, S)
        log_pi = []
        for h, lvl in enumerate(mdp.levels):
            q = c[:, lvl] if h == 0 else c[:, lvl] + G[:, tree.child[lvl]]
            temp = alpha * (h + 1)
            G = G.index_copy(1, lvl, temp * torch.logsumexp(q / temp, -1))
            log_pi.append(torch.log_softmax(q / temp, -1))
        nu = c.new_zeros(B, S * A)
        for lvl, lp in zip(reversed(mdp.levels), reversed(log_pi)):
            parent = tree.parent_sa[lvl]
            if (parent < 0).any():  # the root level
                inflow = mdp.mu0[lvl].expand(B, -1)
            else:
                inflow = nu[:, parent]
            cols = (lvl.unsqueeze(-1) * A + torch.arange(A, device=c.device)).flatten()
            nu = nu.index_copy(1, cols, (inflow.unsqueeze(-1) * lp.exp()).flatten(1))
        return nu.view(B, S, A)
