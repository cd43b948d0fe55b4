"""The closed-form backend ``tree``: the regularized follower problem on a history tree.

On a finite-horizon MDP whose states form a tree rooted at the start state (deterministic
transitions, one parent state-action pair per state, all leaves at the same depth; e.g. states
that are histories, as in sequential sales and scheduling) the joint entropy of the occupancy
weighs the policy entropy at ``s`` by the number ``d(s)`` of decisions left, so the program of the
paper's equation 13 is solved exactly by backward induction at temperature ``alpha d(s)``:
``G(s) = alpha d(s) logsumexp_a((c(s, a) + G(child(s, a))) / (alpha d(s)))``, the policy is the
matching softmax, and ``nu`` follows by pushing the flow forward.

The solution is the gradient of the optimal value, ``nu = grad_c (mu0(root) G(root))``, so its
Jacobian is that value's Hessian, symmetric: the backward pass is the forward derivative of the same
recursion along the incoming gradient, one sweep up and one down (:class:`_TreeSolve`), instead of
autograd through every operation of the two sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from dmd_torch.mdp import TabularMDP
from dmd_torch.regularized.base import Backend
from dmd_torch.regularized.flow import mdp_cache

__all__ = ["TreeBackend", "tree_applicable"]


@dataclass(frozen=True)
class _Tree:
    """A history tree in level order (heights 0, 1, ..., the root last), so that each level is a
    block of consecutive states: ``order`` lists the states so, ``place`` inverts it, and each
    level's children and parents are indices local to the level below and above."""

    order: torch.Tensor  # [S] long: the states by height
    place: torch.Tensor  # [S] long: the position of each state in ``order``
    sizes: list[int]  # states per level, height 0 first
    children: list[torch.Tensor]  # per height h >= 1: [n_h, A] children among the level h - 1 states
    parents: list[torch.Tensor]  # per height h below the root: [n_h] parent (state, action) among level h + 1's
    root_mass: torch.Tensor  # [1, 1]: mu0 of the root


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
    levels = mdp.levels
    assert levels is not None
    order = torch.cat(levels)
    place = torch.empty_like(order)
    place[order] = torch.arange(S, device=mdp.device)
    starts = [0]
    for lvl in levels:
        starts.append(starts[-1] + len(lvl))
    children = [place[child[lvl]] - starts[h - 1] for h, lvl in enumerate(levels) if h > 0]
    parents = []
    for h, lvl in enumerate(levels[:-1]):
        p_state, p_action = parent_sa[lvl] // A, parent_sa[lvl] % A
        parents.append((place[p_state] - starts[h + 1]) * A + p_action)
    return _Tree(
        order=order,
        place=place,
        sizes=[len(lvl) for lvl in levels],
        children=children,
        parents=parents,
        root_mass=mdp.mu0[roots].view(1, 1),
    )


def tree_applicable(mdp: TabularMDP) -> bool:
    """Whether the closed-form ``"tree"`` backend applies to ``mdp``.

    It does for finite-horizon MDPs (``gamma = 1``) with deterministic transitions whose states
    form a tree rooted at the start state (``mu0`` a point mass there, every other state with
    exactly one parent state-action pair) with all leaves at the same depth, e.g. MDPs whose
    states are histories.
    """
    return isinstance(_tree_structure(mdp), _Tree)


def _sweeps(tree: _Tree, c: torch.Tensor, alpha: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The policies ``pi`` and occupancies ``nu`` per level (height 0 first), each ``[B, n_h, A]``."""
    blocks = c.index_select(1, tree.order).split(tree.sizes, dim=1)  # [B, n_h, A] per height h
    pis, G = [], c.new_zeros(0)
    for h, block in enumerate(blocks):
        q = block if h == 0 else block + G[:, tree.children[h - 1]]
        temp = alpha * (h + 1)
        x = q / temp
        log_pi = torch.log_softmax(x, -1)
        pis.append(log_pi.exp())
        G = temp * (x.amax(-1) - log_pi.amax(-1))  # logsumexp(x) = x_a - log_pi_a at the top action a
    nus = [tree.root_mass * pis[-1]]
    for h in reversed(range(len(blocks) - 1)):
        nus.append(nus[-1].flatten(1)[:, tree.parents[h]].unsqueeze(-1) * pis[h])
    return pis, nus[::-1]


class _TreeSolve(torch.autograd.Function):
    """``nu(c)`` on a history tree; the backward applies the symmetric Jacobian ``d nu / d c`` to the
    incoming gradient ``g`` as the derivative of the sweeps along ``g``: up,
    ``dq = g + dG(child)``, ``dG = sum_a pi dq``, ``d log pi = (dq - dG) / (alpha d(s))``; down,
    ``d nu = d nu(parent) pi + nu d log pi``."""

    @staticmethod
    def forward(ctx, c: torch.Tensor, alpha: float, tree: _Tree) -> torch.Tensor:  # type: ignore[override]
        pis, nus = _sweeps(tree, c, alpha)
        ctx.alpha, ctx.tree = alpha, tree
        ctx.save_for_backward(*pis, *nus)
        return torch.cat(nus, 1).index_select(1, tree.place)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        tree, H = ctx.tree, len(ctx.tree.sizes)
        pis, nus = ctx.saved_tensors[:H], ctx.saved_tensors[H:]
        blocks = g.index_select(1, tree.order).split(tree.sizes, dim=1)
        dlog_pi, dG = [], g.new_zeros(0)
        for h, block in enumerate(blocks):
            dq = block if h == 0 else block + dG[:, tree.children[h - 1]]
            dG = (pis[h] * dq).sum(-1)
            dlog_pi.append((dq - dG.unsqueeze(-1)) / (ctx.alpha * (h + 1)))
        dnus = [nus[-1] * dlog_pi[-1]]
        for h in reversed(range(H - 1)):
            dnus.append(dnus[-1].flatten(1)[:, tree.parents[h]].unsqueeze(-1) * pis[h] + nus[h] * dlog_pi[h])
        return torch.cat(dnus[::-1], 1).index_select(1, tree.place), None, None


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
        return _TreeSolve.apply(c, alpha, tree)
