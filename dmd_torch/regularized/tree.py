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

:func:`tree_revenue` goes one step further for the leader's revenue: the ``n + 1`` follower problems
of each profile, their optimal values ``mu0(root) G(root)`` and the summed payments of Definition 3.1
in one forward pass, and their gradient in ``(log w, b)`` in closed form (:class:`_TreeRevenue`): one
autograd node, about a third of the operations of the general path, which on small trees is most
of a training step's time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from dmd_torch.mdp import TabularMDP
from dmd_torch.regularized.base import Backend
from dmd_torch.regularized.flow import mdp_cache

__all__ = ["TreeBackend", "tree_applicable", "tree_revenue"]


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


def _levels(tree: _Tree, x: torch.Tensor) -> list[torch.Tensor]:
    """``x[B, S, A]`` split into the blocks of the levels ``[B, n_h, A]``, height 0 first."""
    return list(x.index_select(1, tree.order).split(tree.sizes, dim=1))


def _sweeps(
    tree: _Tree, blocks: list[torch.Tensor], alpha: float
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """The policies ``pi`` and occupancies ``nu`` per level (height 0 first), each ``[B, n_h, A]``,
    and the optimal value ``mu0(root) G(root)`` ``[B]``, for the rewards ``c`` by level (:func:`_levels`)."""
    pis, G = [], blocks[0].new_zeros(0)
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
    return pis, nus[::-1], (tree.root_mass * G).squeeze(-1)


def _hvp(
    tree: _Tree, pis: list[torch.Tensor], nus: list[torch.Tensor], g: list[torch.Tensor], alpha: float
) -> list[torch.Tensor]:
    """``(d nu / d c) g`` by level (the Jacobian is symmetric): the derivative of :func:`_sweeps` along
    ``g``; up, ``dq = g + dG(child)``, ``dG = sum_a pi dq``, ``d log pi = (dq - dG) / (alpha d(s))``;
    down, ``d nu = d nu(parent) pi + nu d log pi``."""
    H = len(pis)
    dlog_pi, dG = [], g[0].new_zeros(0)
    for h, block in enumerate(g):
        dq = block if h == 0 else block + dG[:, tree.children[h - 1]]
        dG = (pis[h] * dq).sum(-1)
        dlog_pi.append((dq - dG.unsqueeze(-1)) / (alpha * (h + 1)))
    dnus = [nus[-1] * dlog_pi[-1]]
    for h in reversed(range(H - 1)):
        dnus.append(dnus[-1].flatten(1)[:, tree.parents[h]].unsqueeze(-1) * pis[h] + nus[h] * dlog_pi[h])
    return dnus[::-1]


class _TreeSolve(torch.autograd.Function):
    """``nu(c)`` on a history tree; the backward applies the symmetric Jacobian ``d nu / d c`` to the
    incoming gradient as the derivative of the sweeps along it (:func:`_hvp`)."""

    @staticmethod
    def forward(ctx, c: torch.Tensor, alpha: float, tree: _Tree) -> torch.Tensor:  # type: ignore[override]
        pis, nus, _ = _sweeps(tree, _levels(tree, c), alpha)
        ctx.alpha, ctx.tree = alpha, tree
        ctx.save_for_backward(*pis, *nus)
        return torch.cat(nus, 1).index_select(1, tree.place)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        tree, H = ctx.tree, len(ctx.tree.sizes)
        pis, nus = ctx.saved_tensors[:H], ctx.saved_tensors[H:]
        dnus = _hvp(tree, pis, nus, _levels(tree, g), ctx.alpha)
        return torch.cat(dnus, 1).index_select(1, tree.place), None, None


class _TreeRevenue(torch.autograd.Function):
    """The regularized revenue of one AMA on ``P`` profiles, ``[P]``, with its gradient in closed form.

    With ``c_0 = sum_i w_i r_i + b`` and ``c_(1+i) = c_0 - w_i r_i``, the summed payments of
    Definition 3.1 are ``sum_i <r_i, nu_0> + sum_i (asw_(1+i) - asw_0) / w_i``, where ``asw_k`` is the
    regularized optimum ``mu0(root) G(root)`` of problem ``k`` and ``nu_0`` the full problem's solution.
    By the envelope theorem ``d asw_k / d c_k = nu_k``; ``d nu_0 / d c_0`` is the symmetric Jacobian of
    :func:`_hvp`. So ``d / d c_(1+i) = nu_(1+i) / w_i``, ``d / d c_0 = (d nu_0 / d c_0) sum_i r_i -
    nu_0 sum_i 1 / w_i``, and the chain rule through ``c`` and the ``1 / w_i`` gives the parameters'.
    The problems are stacked ``[n + 1, P, S, A]`` (the full problems first) in the tree's level order.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, log_weights: torch.Tensor, boosts: torch.Tensor, r: torch.Tensor, alpha: float, tree: _Tree
    ) -> torch.Tensor:
        P, n, S, A = r.shape
        w = log_weights.exp()
        r_by_level = r.index_select(2, tree.order).transpose(0, 1)  # [n, P, S, A]
        c_full = torch.tensordot(w, r_by_level, 1) + boosts.index_select(0, tree.order)  # [P, S, A]
        c = torch.cat([c_full.unsqueeze(0), torch.addcmul(c_full, w.view(n, 1, 1, 1), r_by_level, value=-1.0)])
        pis, nus, value = _sweeps(tree, list(c.view((n + 1) * P, S, A).split(tree.sizes, dim=1)), alpha)
        asw = value.view(n + 1, P)
        nu = torch.cat(nus, 1).view(n + 1, P, S, A)
        r_sum = r_by_level.sum(0)  # [P, S, A]
        revenue = (r_sum * nu[0]).sum((-2, -1)) + ((asw[1:] - asw[0]) / w.unsqueeze(-1)).sum(0)
        ctx.alpha, ctx.tree = alpha, tree
        ctx.save_for_backward(w, r_by_level, r_sum, asw, nu, *(x[:P] for x in pis), *(x[:P] for x in nus))
        return revenue

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:  # type: ignore[override]
        tree, H = ctx.tree, len(ctx.tree.sizes)
        w, r_by_level, r_sum, asw, nu, *rest = ctx.saved_tensors
        n, P, S, A = r_by_level.shape
        inv_w = 1.0 / w
        gw = inv_w.unsqueeze(-1) * g  # [n, P]: d revenue / d asw_(1+i)
        # d / d c: (d nu_0 / d c_0) g sum_i r_i - g nu_0 sum_i 1 / w_i for the full problems, g nu_(1+i) / w_i
        hvp = _hvp(tree, rest[:H], rest[H:], list((g.view(P, 1, 1) * r_sum).split(tree.sizes, dim=1)), ctx.alpha)
        g_full = torch.cat(hvp, 1) - nu[0] * (g * inv_w.sum()).view(P, 1, 1)
        g_without = nu[1:] * gw.view(n, P, 1, 1)
        g_total = g_full + g_without.sum(0)  # [P, S, A]: each problem's c holds b and every w_j r_j ...
        grad_lw = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_b = g_total.sum(0).index_select(0, tree.place)
        if ctx.needs_input_grad[0]:  # ... but the problem without j: its w_j r_j term is dropped
            grad_w = ((g_total - g_without) * r_by_level).sum((1, 2, 3)) - (gw * (asw[1:] - asw[0])).sum(-1) * inv_w
            grad_lw = w * grad_w
        return grad_lw, grad_b, None, None, None


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


def tree_revenue(
    mdp: TabularMDP, r: torch.Tensor, log_weights: torch.Tensor, boosts: torch.Tensor, alpha: float
) -> torch.Tensor:
    """The regularized revenue ``sum_i p_i`` of one AMA on ``P`` profiles ``[P]`` on a history tree, with
    its gradient in ``log w`` and ``b`` in closed form (:class:`_TreeRevenue`); the same value and
    gradient as the payments of the regularized follower's solution, in one autograd node.

    Args:
        mdp: A history tree (:func:`tree_applicable`).
        r: Agent rewards ``[P, n, S, A]`` (not differentiated).
        log_weights: ``log w`` ``[n]``.
        boosts: ``b`` ``[S, A]``.
        alpha: Entropy weight ``> 0``.
    """
    tree = _tree_structure(mdp)
    if not isinstance(tree, _Tree):
        raise ValueError(f"tree_revenue needs a history tree: {tree}")
    if r.dim() != 4 or tuple(r.shape[2:]) != mdp.shape or tuple(log_weights.shape) != (r.shape[1],) \
            or tuple(boosts.shape) != mdp.shape:
        raise ValueError(f"tree_revenue needs r [P, n, S, A], log_weights [n], boosts [S, A] with (S, A) = "
                         f"{mdp.shape}; got {list(r.shape)}, {list(log_weights.shape)}, {list(boosts.shape)}")
    return _TreeRevenue.apply(log_weights, boosts, r, alpha, tree)
