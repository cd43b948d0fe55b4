"""Exact, batched solvers of the follower's problem (the occupancy LP, paper equation 2).

For a reward tensor ``c[B, S, A]`` the follower maximizes ``sum_{s,a} c(s,a) nu(s,a)`` over
occupancy measures ``nu`` satisfying the flow constraints ``M nu = mu0``, ``nu >= 0``. An optimal
``nu`` is the occupancy of a deterministic policy, which these solvers compute exactly:

* :func:`backward_induction` for acyclic (finite-horizon) MDPs, one vectorized step per height level;
* :func:`policy_iteration` for discounted MDPs with cycles, with exact batched linear solves;
* :func:`solve_exact` dispatches between them; :func:`optimal_values` returns the optimal values
  alone (no policy: cheaper by backward induction, e.g. for the ``n`` problems of ``asw^(-i)``);
* :func:`solve_lp_highs` solves equation 2 directly with SciPy's HiGHS, one instance at a time, as the
  reference for tests and benchmarks.

Tie-breaking is deterministic: among the actions whose Q-value lies within
``tie_tol * (1 + |max_a Q|)`` of the maximum, the lowest action index is chosen (policy iteration
keeps its current action when that action is among them, which guarantees termination; so with a
start policy, e.g. :func:`mean_reward_policy`, tied actions resolve to the start's choice).
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
import torch

from dmd_torch.checks import all_finite
from dmd_torch.mdp import TabularMDP, pick

__all__ = [
    "ExactSolution",
    "backward_induction",
    "policy_iteration",
    "solve_exact",
    "optimal_values",
    "PolicyOccupancy",
    "policy_occupancy",
    "occupancy_of_policy",
    "mean_reward_policy",
    "solve_lp_highs",
]

TIE_TOL = 1e-12
_LOOKAHEAD = 3  # value-iteration sweeps before each greedy improvement of policy iteration
_COLUMNWISE = 8  # up to this many actions, maxima and the first near-maximal action go column by column


@dataclass
class ExactSolution:
    """Optimal solution of a batch of follower problems.

    Attributes:
        value: Optimal objective ``mu0 . V`` = ``sum c * nu``, shape ``[B]``.
        values: Optimal state values ``V[B, S]``.
        q: Optimal state-action values ``Q[B, S, A]`` (``None`` if not requested).
        policy: Deterministic optimal policy ``[B, S]`` (action indices).
        occupancy: Its state-action occupancy measure ``nu[B, S, A]`` (``None`` if not requested).
    """

    value: torch.Tensor
    values: torch.Tensor
    q: torch.Tensor | None
    policy: torch.Tensor
    occupancy: torch.Tensor | None


def _max_action(q: torch.Tensor) -> torch.Tensor:
    """``q.amax(-1)``; for a few actions as a chain of elementwise maxima (1.5x faster on CPU)."""
    if q.shape[-1] > _COLUMNWISE or (q.requires_grad and torch.is_grad_enabled()):
        return q.amax(-1)
    cols = q.unbind(-1)
    best = cols[0] if len(cols) == 1 else torch.maximum(cols[0], cols[1])
    for col in cols[2:]:
        torch.maximum(best, col, out=best)
    return best


def _near_threshold(q: torch.Tensor, tie_tol: float) -> torch.Tensor:
    """Actions with ``Q >= max Q - tie_tol (1 + |max Q|)`` count as maximal (module docstring)."""
    best = _max_action(q)
    return best - tie_tol * (1.0 + best.abs())


def _first_near(q: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    """The lowest-index action with ``Q >= thr``."""
    A = q.shape[-1]
    if A > _COLUMNWISE:
        return (q >= thr.unsqueeze(-1)).view(torch.uint8).argmax(-1)  # bool viewed as bytes, no copy
    # the number of leading actions below the threshold, column by column (2x faster than argmax)
    cols = q.unbind(-1)
    behind = cols[0] < thr
    choice = behind.long() if A > 1 else torch.zeros_like(behind, dtype=torch.long)
    for col in cols[1:-1]:
        behind &= col < thr
        choice += behind
    return choice


def _is_near(q: torch.Tensor, thr: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Whether the ``current`` action of each state is near-maximal (``Q >= thr``)."""
    return q.gather(-1, current.unsqueeze(-1)).squeeze(-1) >= thr


def _keep_or_first_near(q: torch.Tensor, thr: torch.Tensor, current: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``current`` where it is near-maximal (``keep``), else the lowest-index near-maximal action."""
    return torch.where(keep, current, _first_near(q, thr))


def _greedy(q: torch.Tensor, tie_tol: float) -> torch.Tensor:
    """Lowest-index near-maximal action."""
    return _first_near(q, _near_threshold(q, tie_tol))


@dataclass
class PolicyOccupancy:
    """The occupancy measure ``nu[..., S, A]`` of deterministic policies, kept as a path where it is one.

    Where every trajectory is a single path (:attr:`TabularMDP.path_start`, e.g. MDPs whose states
    are histories), ``nu`` is ``gamma^t`` on the ``t``-th state-action pair of the policy's path and
    zero elsewhere, so ``<x, nu>`` is a sum of ``H`` entries of ``x`` (:meth:`inner`); elsewhere
    ``nu`` is stored densely. Built by :func:`policy_occupancy`.

    Attributes:
        shape: ``(S, A)``.
        path: Flat indices ``s * A + a`` of each policy's path, ``[..., H]`` (``None``: dense).
        weights: ``gamma^t``, ``[H]`` (with a path).
        nu: The dense occupancy ``[..., S, A]`` (without a path; else built by :meth:`dense`).
    """

    shape: tuple[int, int]
    path: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    nu: torch.Tensor | None = None

    def dense(self) -> torch.Tensor:
        """The occupancy measure ``nu[..., S, A]``."""
        if self.nu is None:
            assert self.path is not None and self.weights is not None
            lead = self.path.shape[:-1]
            flat = self.weights.new_zeros(*lead, self.shape[0] * self.shape[1])
            self.nu = flat.scatter_(-1, self.path, self.weights.expand(self.path.shape)).view(*lead, *self.shape)
        return self.nu

    def inner(self, x: torch.Tensor, extra: int = 0) -> torch.Tensor:
        """``<x, nu> = sum_{s,a} x(s, a) nu(s, a)`` for ``x[..., E, S, A]``, returning ``[..., E]``.

        Args:
            x: Its leading dimensions broadcast against the policies'; ``extra`` further dimensions
                ``E`` (e.g. the agents of rewards ``r[B, n, S, A]``) stand between them and ``(S, A)``.
            extra: Number of those dimensions.
        """
        flat = x.flatten(-2)
        if self.path is None:
            assert self.nu is not None
            nu = self.nu.flatten(-2).to(flat.dtype)
            nu = nu.view(*nu.shape[:-1], *(1,) * extra, nu.shape[-1])
            return torch.einsum("...s,...s->...", flat, nu)
        H = self.path.shape[-1]
        index = self.path.view(*self.path.shape[:-1], *(1,) * extra, H)
        a, b = index.shape[:-1], flat.shape[:-1]
        k = max(len(a), len(b))  # broadcast shape (expand checks it; torch.broadcast_shapes costs 0.3 s of imports once)
        lead = [max(x, y) for x, y in zip((1,) * (k - len(a)) + tuple(a), (1,) * (k - len(b)) + tuple(b))]
        picked = flat.expand(*lead, flat.shape[-1]).gather(-1, index.expand(*lead, H))
        assert self.weights is not None
        return picked @ self.weights.to(picked.dtype)


def policy_occupancy(mdp: TabularMDP, policy: torch.Tensor) -> PolicyOccupancy:
    """Occupancy measure of deterministic policies ``policy[..., S]`` (action indices).

    Where every trajectory is one path (:attr:`TabularMDP.path_start`) it is followed from the start,
    one gather per level (no ``[..., S, A]`` tensor is formed); elsewhere
    ``sum_a nu(s, a) = gamma * inflow(s) + mu0(s)`` is solved densely: by a forward sweep over
    height levels (acyclic MDPs), by doubling (deterministic MDPs, see :func:`_doubling`), or by a
    linear solve ``(I - gamma P_pi)^T d = mu0``.
    """
    start = mdp.path_start
    if start is None:
        lead = policy.shape[:-1]
        nu = _dense_occupancy(mdp, policy.reshape(-1, mdp.num_states))
        return PolicyOccupancy(mdp.shape, nu=nu.view(*lead, *mdp.shape))
    S, A = mdp.shape
    H = len(mdp.levels or ())
    step = mdp.next_states[..., 0].flatten()  # successor of each flat (s, a)
    state = torch.full(policy.shape[:-1] + (1,), start, dtype=torch.long, device=policy.device)
    path = torch.empty(*policy.shape[:-1], H, dtype=torch.long, device=policy.device)
    for t in range(H):
        sa = state * A + policy.gather(-1, state)
        path[..., t : t + 1] = sa
        state = step[sa]
    weights = mdp.gamma ** torch.arange(H, dtype=mdp.dtype, device=policy.device)
    return PolicyOccupancy(mdp.shape, path=path, weights=weights)


def occupancy_of_policy(mdp: TabularMDP, policy: torch.Tensor) -> torch.Tensor:
    """State-action occupancy ``nu[..., S, A]`` of deterministic policies ``policy[..., S]`` (see
    :func:`policy_occupancy`)."""
    return policy_occupancy(mdp, policy).dense()


def _dense_occupancy(mdp: TabularMDP, policy: torch.Tensor) -> torch.Tensor:
    """``nu[B, S, A]`` of ``policy[B, S]`` by a forward sweep, doubling or a linear solve."""
    B, S = policy.shape
    if mdp.levels is not None:
        d = mdp.mu0.expand(B, S).clone()
        for idx in reversed(mdp.level_index[1:]):
            a = policy[:, idx]  # [B, L]
            L = a.shape[1]
            rows = torch.arange(S, device=policy.device)[idx]
            ns = mdp.next_states[rows.unsqueeze(0), a]  # [B, L, K]
            pr = mdp.next_probs[rows.unsqueeze(0), a]
            flow = mdp.gamma * d[:, idx].unsqueeze(-1) * pr
            d.scatter_add_(1, ns.reshape(B, -1), flow.reshape(B, L * pr.shape[-1]))
    elif mdp.is_deterministic:
        d = _doubling(mdp, policy, mdp.mu0.expand(B, S), transpose=True)
    else:
        P_pi = _policy_kernel(mdp, policy)
        eye = torch.eye(S, dtype=mdp.dtype, device=policy.device)
        lhs = (eye - mdp.gamma * P_pi).transpose(-1, -2)
        d = torch.linalg.solve(lhs, mdp.mu0.expand(B, S).unsqueeze(-1)).squeeze(-1)
    return _spread(d, policy, mdp.num_actions)


def _spread(d: torch.Tensor, policy: torch.Tensor, A: int) -> torch.Tensor:
    """``nu[b, s, a] = d[b, s] * 1{a = policy[b, s]}``."""
    nu = torch.zeros(*d.shape, A, dtype=d.dtype, device=d.device)
    return nu.scatter_(-1, policy.unsqueeze(-1), d.unsqueeze(-1))


def _policy_kernel(mdp: TabularMDP, policy: torch.Tensor) -> torch.Tensor:
    """Dense ``P_pi[B, S, S']`` of deterministic policies."""
    B, S = policy.shape
    ns = mdp.next_states[torch.arange(S, device=policy.device), policy]  # [B, S, K]
    pr = mdp.next_probs[torch.arange(S, device=policy.device), policy]
    P = torch.zeros(B, S, S, dtype=mdp.dtype, device=policy.device)
    return P.scatter_add_(-1, ns, pr)


def _doubling(mdp: TabularMDP, policy: torch.Tensor, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``sum_t (gamma P_pi)^t x`` (or with ``P_pi^T``) for a deterministic MDP, by repeated squaring.

    With ``g(s)`` the discounted probability of the single successor ``n(s)`` under the policy,
    ``(I + G^(2^k)) ... (I + G^2)(I + G) = sum_{t < 2^(k+1)} G^t``, and ``G^(2^k)`` is again a single-
    successor map (``n`` composed with itself, ``g`` multiplied along the way). The series is cut
    after the fewest factors ``k + 1`` whose tail ``gamma^(2^(k+1)) / (1 - gamma)`` is below
    ``1e-18``, i.e. at round-off: this is an exact evaluation of the policy, not value iteration.
    """
    S, A = mdp.shape
    flat = policy + torch.arange(0, S * A, A, device=policy.device)  # flat (s, pi(s)) indices [B, S]
    nxt = mdp.next_states[..., 0].flatten().take(flat)  # [B, S]
    # with unit transition probabilities g = gamma^(2^k) everywhere: a scalar, no gathers
    g: torch.Tensor | float = mdp.gamma if mdp.unit_transitions else mdp.gamma * mdp.next_probs[..., 0].flatten().take(flat)
    steps = max(1, math.ceil(math.log2(math.log(1e-18 * (1 - mdp.gamma)) / math.log(mdp.gamma))))
    out = x
    for step in range(steps):
        if transpose:
            out = out.scatter_add(-1, nxt, g * out)
        elif isinstance(g, float):
            out = torch.add(out, out.gather(-1, nxt), alpha=g)
        else:
            out = torch.addcmul(out, g, out.gather(-1, nxt))
        if step + 1 < steps:
            g = g * g if isinstance(g, float) else g * g.gather(-1, nxt)
            nxt = nxt.gather(-1, nxt)
    return out


def _level_q(
    c: torch.Tensor,
    V: torch.Tensor,
    idx: slice | torch.Tensor,
    ns: torch.Tensor | None,
    pr: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``Q[B, L, A] = c + sum_k gamma P V(next)`` of one height level (see :attr:`TabularMDP.level_plan`),
    written into ``out`` if given (else at height 0 a view of ``c``)."""
    if ns is None:  # height 0: every action terminates
        return c[:, idx] if out is None else out.copy_(c[:, idx])
    B, A = c.shape[0], c.shape[-1]
    L, _, K = ns.shape
    nxt = pick(V, ns.flatten()).view(B, L, A, K)
    if pr is None:  # one successor with gamma * P = 1
        return torch.add(c[:, idx], nxt[..., 0], out=out)
    return torch.add(c[:, idx], nxt[..., 0] * pr[..., 0] if K == 1 else (nxt * pr).sum(-1), out=out)


def backward_induction(
    mdp: TabularMDP, c: torch.Tensor, tie_tol: float = TIE_TOL, occupancy: bool = True
) -> ExactSolution:
    """Exact solution of an acyclic MDP by backward induction over height levels.

    ``Q(s, a) = c(s, a) + gamma * sum_s' P(s'|s,a) V(s')``, ``V(s) = max_a Q(s, a)``, one vectorized
    step per level of :attr:`TabularMDP.level_plan`.

    Args:
        mdp: An acyclic MDP.
        c: Rewards ``[B, S, A]``.
        tie_tol: Relative tolerance under which actions count as tied (see module docstring).
        occupancy: Also compute the occupancy of the optimal policy (else ``None``).
    """
    if mdp.levels is None:
        raise ValueError("backward_induction needs an acyclic (finite-horizon) MDP")
    B, S, A = c.shape
    V = torch.zeros(B, S, dtype=c.dtype, device=c.device)
    Q = torch.empty_like(c)
    pi = torch.empty(B, S, dtype=torch.long, device=c.device)
    for level in mdp.level_plan:
        idx = level[0]
        if isinstance(idx, slice):  # Q[:, idx] is a view: write the level's Q-values into it
            q = _level_q(c, V, *level, out=Q[:, idx])
        else:
            q = _level_q(c, V, *level)
            Q[:, idx] = q
        a = _greedy(q, tie_tol)
        pi[:, idx] = a
        V[:, idx] = q.gather(-1, a.unsqueeze(-1)).squeeze(-1)
    nu = occupancy_of_policy(mdp, pi) if occupancy else None
    return ExactSolution(V @ mdp.mu0, V, Q, pi, nu)


def _evaluate(mdp: TabularMDP, c: torch.Tensor, pi: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """Exact values ``V[B, S]`` of deterministic policies, and the LU factors where a solve was needed.

    Repeated squaring of the successor map for deterministic MDPs (:func:`_doubling`), else a batched
    LU solve of ``(I - gamma P_pi) V = c_pi``.
    """
    c_pi = c.gather(-1, pi.unsqueeze(-1))
    if mdp.is_deterministic:
        return _doubling(mdp, pi, c_pi.squeeze(-1)), None
    eye = torch.eye(pi.shape[-1], dtype=c.dtype, device=c.device)
    lu, pivots = torch.linalg.lu_factor(eye - mdp.gamma * _policy_kernel(mdp, pi))
    return torch.linalg.lu_solve(lu, pivots, c_pi).squeeze(-1), (lu, pivots)


def policy_iteration(
    mdp: TabularMDP,
    c: torch.Tensor,
    tie_tol: float = TIE_TOL,
    max_iter: int = 1000,
    warm_start: int | None = None,
    occupancy: bool = True,
    init_policy: torch.Tensor | None = None,
    init_values: torch.Tensor | None = None,
    q: bool = True,
) -> ExactSolution:
    """Exact solution of a discounted MDP by Howard's policy iteration.

    Evaluation is exact (:func:`_evaluate`): repeated squaring of the successor map for
    deterministic MDPs, else a batched LU solve of ``(I - gamma P_pi) V = c_pi``. Improvement is
    greedy with the tie rule of the module docstring. The first policy is ``init_policy`` if given,
    else greedy after ``warm_start`` sweeps of value iteration from ``init_values`` (default zero;
    default sweeps: 2 for deterministic MDPs, whose evaluation is cheap, 20 for stochastic ones),
    and each later round re-evaluates only the entries whose policy changed. It stops when every
    action is near-maximal for its policy's exact values, which certifies optimality (the values do
    not depend on the start; among tied optimal actions the start's is kept). An entry that is not
    optimal yet improves to the policy that is greedy after three sweeps of value iteration from its
    values (multi-step greedy policy iteration: fewer rounds, each sweep cheaper than an evaluation).

    Args:
        mdp: A discounted MDP (``gamma < 1``).
        c: Rewards ``[B, S, A]``.
        tie_tol: Relative tolerance under which actions count as tied.
        max_iter: Raise if the policies have not converged after this many improvements.
        warm_start: Value-iteration sweeps before the first policy (default: 2 if deterministic, else 20).
        occupancy: Also compute the occupancy of the optimal policy (else ``None``).
        init_policy: First policy, action indices broadcastable to ``[B, S]`` (e.g. from
            :func:`mean_reward_policy`); a good start saves most of the improvement rounds.
        init_values: Start of those sweeps, broadcastable to ``[B, S]`` (ignored with
            ``init_policy``), e.g. the values of a problem with slightly larger rewards.
        q: Also compute the optimal Q-values (else ``None``).
    """
    if mdp.gamma >= 1.0:
        raise ValueError("policy_iteration needs a discount gamma < 1")
    B, S, A = c.shape
    V = torch.zeros(B, S, dtype=c.dtype, device=c.device)
    if init_policy is not None:
        pi = _check_policy(init_policy, (B, S), A).to(c.device).expand(B, S).clone()
    else:
        if init_values is not None:
            V = _check_values(init_values, (B, S)).to(c).expand(B, S)
        for _ in range((2 if mdp.is_deterministic else 20) if warm_start is None else warm_start):
            V = _max_action(mdp.q_values(c, V))
        pi = _greedy(mdp.q_values(c, V), tie_tol)
    active = torch.arange(B, device=c.device)
    ca = c  # the rewards of the active entries
    lu: tuple[torch.Tensor, ...] | None = None
    for _ in range(max_iter):
        everyone = active.numel() == B
        # index_select / index_copy_: several times faster than advanced indexing on CPU
        pa = pi if everyone else pi.index_select(0, active)
        Va, lu_a = _evaluate(mdp, ca, pa)
        if everyone:
            V, lu = Va, lu_a
        else:
            V.index_copy_(0, active, Va)
            if lu is not None and lu_a is not None:
                lu[0].index_copy_(0, active, lu_a[0])
                lu[1].index_copy_(0, active, lu_a[1])
        # optimality check: every state's action is near-maximal for its policy's values (the tie
        # rule); the entries where some state's is not improve and go another round
        qa = mdp.q_values(ca, Va)
        thr = _near_threshold(qa, tie_tol)
        if everyone and not all_finite(thr):  # NaN or inf never settle: stop at once
            raise ValueError("the rewards contain NaN or inf: policy iteration cannot compare the actions")
        keep = _is_near(qa, thr, pa)
        moved = (~keep).any(-1).nonzero().squeeze(-1)
        if moved.numel() == 0:
            break
        active, ca, pa = active.index_select(0, moved), ca.index_select(0, moved), pa.index_select(0, moved)
        # improvement: greedy after _LOOKAHEAD value-iteration sweeps from the policy's values
        # (multi-step greedy policy iteration: fewer rounds than the one-step greedy policy, and
        # a sweep costs a fraction of an evaluation); tied actions stay. Where that leaves a
        # policy unchanged (possible within the tie tolerance), the one-step greedy policy is taken.
        q1 = qa.index_select(0, moved)
        W = _max_action(q1)
        for _ in range(_LOOKAHEAD - 1):
            W = _max_action(mdp.q_values(ca, W))
        qh = mdp.q_values(ca, W)
        thr_h = _near_threshold(qh, tie_tol)
        new = _keep_or_first_near(qh, thr_h, pa, _is_near(qh, thr_h, pa))
        stuck = (new == pa).all(-1)
        if bool(stuck.any()):
            one_step = _keep_or_first_near(q1, thr.index_select(0, moved), pa, keep.index_select(0, moved))
            new = torch.where(stuck.unsqueeze(-1), one_step, new)
        pi.index_copy_(0, active, new)
    else:
        raise RuntimeError(f"policy iteration did not converge in {max_iter} iterations")
    Q = mdp.q_values(c, V) if q else None
    if not occupancy:
        nu = None
    elif lu is None:
        nu = occupancy_of_policy(mdp, pi)
    else:  # (I - gamma P_pi)^T d = mu0, with the factorization of the final evaluation
        d = torch.linalg.lu_solve(*lu, mdp.mu0.expand(B, S).unsqueeze(-1), adjoint=True).squeeze(-1)
        nu = _spread(d, pi, A)
    return ExactSolution(V @ mdp.mu0, V, Q, pi, nu)


def _check_broadcasts(name: str, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    """Raises unless ``x`` broadcasts to ``shape``."""
    dims = tuple(x.shape)
    if len(dims) > len(shape) or any(d not in (1, t) for d, t in zip(reversed(dims), reversed(shape))):
        raise ValueError(f"{name} of shape {dims} does not broadcast to {shape}")


def _check_policy(policy: torch.Tensor, shape: tuple[int, ...], A: int) -> torch.Tensor:
    """Validates a start policy: integer action indices in ``[0, A)`` broadcastable to ``shape``."""
    if not isinstance(policy, torch.Tensor) or policy.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"init_policy must be an integer tensor of action indices, got {policy!r:.80}")
    _check_broadcasts("init_policy", policy, shape)
    if policy.numel() and (policy.min() < 0 or policy.max() >= A):
        raise ValueError(f"init_policy actions must lie in [0, {A}), got values in [{int(policy.min())}, {int(policy.max())}]")
    return policy.long()


def _check_values(values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Validates start values: a finite floating tensor broadcastable to ``shape``."""
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        raise TypeError(f"init_values must be a floating-point tensor, got {values!r:.80}")
    _check_broadcasts("init_values", values, shape)
    if not all_finite(values):
        raise ValueError("init_values contain NaN or inf")
    return values


def mean_reward_policy(mdp: TabularMDP, c: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor | None:
    """Optimal policy for the mean of ``c`` over the batch dimensions ``dims`` (kept with size 1).

    A start for policy iteration (``init_policy`` of :func:`solve_exact`) when many reward tensors
    share most of their structure, e.g. the ``n + 1`` problems of many profiles under one grid
    candidate whose large boosts dominate the agents' rewards: most of them are then optimal at the
    start or one round later (grid search on the gridworld: 2-3x faster). Where the optimal policy
    varies with the profile (small boosts, e.g. VCG) it does not help; the default start is better.
    ``None`` for acyclic MDPs, which backward induction solves without a start.

    Args:
        mdp: The MDP.
        c: Rewards ``[..., S, A]``.
        dims: Leading dimensions to average over (negative indices count from the end of the batch).
    """
    if mdp.levels is not None:
        return None
    lead = c.dim() - 2
    for d in dims:
        if not -lead <= d < lead:
            raise ValueError(f"dims must index the {lead} batch dimensions of c, got {d}")
    mean = c.mean(tuple(d % lead for d in dims), keepdim=True) if dims else c
    return solve_exact(mdp, mean, check_finite=False, occupancy=False, q=False).policy


def solve_exact(
    mdp: TabularMDP,
    c: torch.Tensor,
    tie_tol: float = TIE_TOL,
    check_finite: bool = True,
    occupancy: bool = True,
    init_policy: torch.Tensor | None = None,
    init_values: torch.Tensor | None = None,
    q: bool = True,
) -> ExactSolution:
    """Solves the follower's problem exactly for every reward tensor in the batch.

    Args:
        mdp: The MDP.
        c: Rewards ``[..., S, A]``; leading dimensions are flattened into one batch and restored.
        tie_tol: Relative tolerance under which actions count as tied (module docstring).
        check_finite: Reject NaN/inf in ``c`` (callers that validated their inputs may skip the scan).
        occupancy: Also compute the optimal occupancies (callers that need them for a few entries
            only, e.g. the full problem but not the ``n`` problems without an agent, can pass
            ``False`` and call :func:`occupancy_of_policy` on those policies).
        init_policy: First policy of policy iteration (discounted MDPs), action indices
            broadcastable to ``c.shape[:-1]`` (see :func:`mean_reward_policy`); ignored by backward
            induction.
        init_values: Values ``[..., S]`` that policy iteration's warm-start sweeps begin from when
            there is no ``init_policy`` (see :func:`policy_iteration`); ignored by backward induction.
        q: Also return the optimal Q-values (policy iteration skips them otherwise; backward
            induction fills them anyway).

    Returns:
        An :class:`ExactSolution` whose tensors carry the leading dimensions of ``c``
        (``occupancy`` is ``None`` when not requested).
    """
    mdp.check_rewards(c, check_finite=check_finite)
    lead = c.shape[:-2]
    flat = c.reshape(-1, *mdp.shape).to(mdp.dtype)
    if mdp.levels is not None:
        sol = backward_induction(mdp, flat, tie_tol, occupancy=occupancy)
    else:
        states = lead + (mdp.num_states,)
        if init_policy is not None:
            init_policy = _check_policy(init_policy, states, mdp.num_actions).expand(states).reshape(-1, mdp.num_states)
        if init_values is not None:
            init_values = _check_values(init_values, states).expand(states).reshape(-1, mdp.num_states)
        sol = policy_iteration(
            mdp, flat, tie_tol, occupancy=occupancy, init_policy=init_policy, init_values=init_values, q=q
        )
    return ExactSolution(
        sol.value.reshape(lead),
        sol.values.reshape(*lead, mdp.num_states),
        None if sol.q is None else sol.q.reshape(*lead, *mdp.shape),
        sol.policy.reshape(*lead, mdp.num_states),
        None if sol.occupancy is None else sol.occupancy.reshape(*lead, *mdp.shape),
    )


def optimal_values(
    mdp: TabularMDP,
    c: torch.Tensor,
    check_finite: bool = True,
    init_policy: torch.Tensor | None = None,
    init_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """Optimal values ``max_nu sum c * nu`` (equation 2) of every reward tensor in the batch, ``[...]``.

    Acyclic MDPs: backward induction with ``V(s) = max_a Q(s, a)``, no policy (one reduction per
    level instead of the tie-broken argmax of :func:`backward_induction`; the two values agree
    exactly unless actions tie within the tie tolerance, then within it). Discounted MDPs: the value
    of :func:`policy_iteration` (started from ``init_policy`` or ``init_values`` if given), which
    needs the policies anyway.

    Args:
        mdp: The MDP.
        c: Rewards ``[..., S, A]``.
        check_finite: Reject NaN/inf in ``c``.
        init_policy: Start of policy iteration (discounted MDPs), as in :func:`solve_exact`.
        init_values: Start of its warm-start sweeps, as in :func:`solve_exact`.
    """
    if mdp.levels is None:
        return solve_exact(
            mdp, c, check_finite=check_finite, occupancy=False, init_policy=init_policy, init_values=init_values, q=False
        ).value
    mdp.check_rewards(c, check_finite=check_finite)
    lead = c.shape[:-2]
    flat = c.reshape(-1, *mdp.shape).to(mdp.dtype)
    V = torch.zeros(flat.shape[:2], dtype=flat.dtype, device=flat.device)
    for level in mdp.level_plan:
        V[:, level[0]] = _max_action(_level_q(flat, V, *level))
    return (V @ mdp.mu0).reshape(lead)


def solve_lp_highs(mdp: TabularMDP, c: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Solves the occupancy LP (paper, equation 2) with SciPy's HiGHS, one instance at a time.

    ``max c . nu  s.t.  M nu = mu0, nu >= 0`` with the flow matrix of :meth:`TabularMDP.flow_matrix`
    (built once for the whole batch). This is the reference for tests and benchmarks, not a hot path.

    Args:
        mdp: The MDP.
        c: Rewards ``[..., S, A]``.

    Returns:
        Optimal values ``[...]`` and optimal occupancies ``[..., S, A]`` as NumPy arrays.

    Raises:
        RuntimeError: If HiGHS does not report an optimal solution for some instance.
    """
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    mdp.check_rewards(c)
    M = mdp.flow_matrix().cpu()
    idx = M.indices().numpy()
    A_eq = coo_matrix((M.values().numpy(), (idx[0], idx[1])), shape=tuple(M.shape)).tocsr()
    b_eq = mdp.mu0.cpu().double().numpy()
    flat = c.detach().cpu().double().reshape(-1, mdp.num_states * mdp.num_actions).numpy()
    values = np.empty(flat.shape[0])
    nus = np.empty_like(flat)
    for k, row in enumerate(flat):
        res = linprog(-row, A_eq=A_eq, b_eq=b_eq, bounds=(0, None), method="highs")
        if res.status != 0:
            raise RuntimeError(f"HiGHS failed on the occupancy LP (batch entry {k}): {res.message}")
        values[k], nus[k] = -res.fun, res.x
    return values.reshape(c.shape[:-2]), nus.reshape(c.shape)
