"""Exact, batched solvers of the follower's problem (the occupancy LP, paper equation 2).

For a reward tensor ``c[B, S, A]`` the follower maximizes ``sum_{s,a} c(s,a) nu(s,a)`` over
occupancy measures ``nu`` satisfying the flow constraints ``M nu = mu0``, ``nu >= 0``. An optimal
``nu`` is the occupancy of a deterministic policy, which these solvers compute exactly:

* :func:`backward_induction` for acyclic (finite-horizon) MDPs, one vectorized step per height level;
* :func:`policy_iteration` for discounted MDPs with cycles, with exact batched linear solves;
* :func:`solve_exact` dispatches between them;
* :func:`solve_lp_highs` solves equation 2 directly with SciPy's HiGHS, one instance at a time, as the
  reference for tests and benchmarks.

Tie-breaking is deterministic: among the actions whose Q-value lies within
``tie_tol * (1 + |max_a Q|)`` of the maximum, the lowest action index is chosen (policy iteration
keeps its current action when that action is among them, which guarantees termination).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dmd_torch.mdp import TabularMDP

__all__ = [
    "ExactSolution",
    "backward_induction",
    "policy_iteration",
    "solve_exact",
    "occupancy_of_policy",
    "solve_lp_highs",
]

TIE_TOL = 1e-12


@dataclass
class ExactSolution:
    """Optimal solution of a batch of follower problems.

    Attributes:
        value: Optimal objective ``mu0 . V`` = ``sum c * nu``, shape ``[B]``.
        values: Optimal state values ``V[B, S]``.
        q: Optimal state-action values ``Q[B, S, A]``.
        policy: Deterministic optimal policy ``[B, S]`` (action indices).
        occupancy: Its state-action occupancy measure ``nu[B, S, A]``.
    """

    value: torch.Tensor
    values: torch.Tensor
    q: torch.Tensor
    policy: torch.Tensor
    occupancy: torch.Tensor


def _greedy(q: torch.Tensor, tie_tol: float, current: torch.Tensor | None = None) -> torch.Tensor:
    """Lowest-index near-maximal action (keeping ``current`` when it is near-maximal)."""
    best = q.max(-1, keepdim=True).values
    near = q >= best - tie_tol * (1.0 + best.abs())
    choice = near.to(torch.int8).argmax(-1)
    if current is not None:
        keep = near.gather(-1, current.unsqueeze(-1)).squeeze(-1)
        choice = torch.where(keep, current, choice)
    return choice


def occupancy_of_policy(mdp: TabularMDP, policy: torch.Tensor) -> torch.Tensor:
    """State-action occupancy ``nu[B, S, A]`` of deterministic policies ``policy[B, S]``.

    Solves ``sum_a nu(s, a) = gamma * inflow(s) + mu0(s)`` by a forward sweep over height levels
    (acyclic MDPs) or a dense linear solve ``(I - gamma P_pi)^T d = mu0`` (MDPs with cycles).
    """
    B, S = policy.shape
    A = mdp.num_actions
    if mdp.levels is not None:
        d = mdp.mu0.expand(B, S).clone()
        for lvl in reversed(mdp.levels[1:]):
            a = policy[:, lvl]  # [B, L]
            ns = mdp.next_states[lvl.unsqueeze(0), a]  # [B, L, K]
            pr = mdp.next_probs[lvl.unsqueeze(0), a]
            flow = mdp.gamma * d[:, lvl].unsqueeze(-1) * pr
            d.scatter_add_(1, ns.flatten(1), flow.flatten(1))
    else:
        P_pi = _policy_kernel(mdp, policy)
        eye = torch.eye(S, dtype=mdp.dtype, device=policy.device)
        lhs = (eye - mdp.gamma * P_pi).transpose(-1, -2)
        d = torch.linalg.solve(lhs, mdp.mu0.expand(B, S).unsqueeze(-1)).squeeze(-1)
    nu = torch.zeros(B, S, A, dtype=d.dtype, device=d.device)
    return nu.scatter_(-1, policy.unsqueeze(-1), d.unsqueeze(-1))


def _policy_kernel(mdp: TabularMDP, policy: torch.Tensor) -> torch.Tensor:
    """Dense ``P_pi[B, S, S']`` of deterministic policies."""
    B, S = policy.shape
    ns = mdp.next_states[torch.arange(S, device=policy.device), policy]  # [B, S, K]
    pr = mdp.next_probs[torch.arange(S, device=policy.device), policy]
    P = torch.zeros(B, S, S, dtype=mdp.dtype, device=policy.device)
    return P.scatter_add_(-1, ns, pr)


def backward_induction(mdp: TabularMDP, c: torch.Tensor, tie_tol: float = TIE_TOL) -> ExactSolution:
    """Exact solution of an acyclic MDP by backward induction over height levels.

    ``Q(s, a) = c(s, a) + gamma * sum_s' P(s'|s,a) V(s')``, ``V(s) = max_a Q(s, a)``.

    Args:
        mdp: An acyclic MDP.
        c: Rewards ``[B, S, A]``.
        tie_tol: Relative tolerance under which actions count as tied (see module docstring).
    """
    if mdp.levels is None:
        raise ValueError("backward_induction needs an acyclic (finite-horizon) MDP")
    B, S, A = c.shape
    V = torch.zeros(B, S, dtype=c.dtype, device=c.device)
    Q = torch.empty_like(c)
    pi = torch.empty(B, S, dtype=torch.long, device=c.device)
    for lvl in mdp.levels:
        q = c[:, lvl] + mdp.gamma * (V[:, mdp.next_states[lvl]] * mdp.next_probs[lvl]).sum(-1)
        Q[:, lvl] = q
        a = _greedy(q, tie_tol)
        pi[:, lvl] = a
        V[:, lvl] = q.gather(-1, a.unsqueeze(-1)).squeeze(-1)
    nu = occupancy_of_policy(mdp, pi)
    return ExactSolution(V @ mdp.mu0, V, Q, pi, nu)


def policy_iteration(
    mdp: TabularMDP,
    c: torch.Tensor,
    tie_tol: float = TIE_TOL,
    max_iter: int = 1000,
    warm_start: int = 20,
) -> ExactSolution:
    """Exact solution of a discounted MDP by Howard's policy iteration.

    Evaluation solves ``(I - gamma P_pi) V = c_pi`` exactly (batched dense solve); improvement is
    greedy with the tie rule of the module docstring. The first policy is greedy after
    ``warm_start`` sweeps of value iteration (cheap gathers), so that most entries need one or two
    exact evaluations; each later round re-solves only the entries whose policy changed. It stops
    when no policy changes, which certifies optimality.

    Args:
        mdp: A discounted MDP (``gamma < 1``).
        c: Rewards ``[B, S, A]``.
        tie_tol: Relative tolerance under which actions count as tied.
        max_iter: Raise if the policies have not converged after this many improvements.
        warm_start: Value-iteration sweeps before the first policy.
    """
    if mdp.gamma >= 1.0:
        raise ValueError("policy_iteration needs a discount gamma < 1")
    B, S, A = c.shape
    eye = torch.eye(S, dtype=c.dtype, device=c.device)
    V = torch.zeros(B, S, dtype=c.dtype, device=c.device)
    for _ in range(warm_start):
        V = (c + mdp.gamma * mdp.expected_next(V)).max(-1).values
    pi = _greedy(c + mdp.gamma * mdp.expected_next(V), tie_tol)
    active = torch.arange(B, device=c.device)
    for _ in range(max_iter):
        everyone = active.numel() == B
        ca, pa = (c, pi) if everyone else (c[active], pi[active])
        lu_a, piv_a = torch.linalg.lu_factor(eye - mdp.gamma * _policy_kernel(mdp, pa))
        Va = torch.linalg.lu_solve(lu_a, piv_a, ca.gather(-1, pa.unsqueeze(-1))).squeeze(-1)
        new = _greedy(ca + mdp.gamma * mdp.expected_next(Va), tie_tol, current=pa)
        if everyone:
            lu, pivots, V, pi = lu_a, piv_a, Va, new
        else:
            lu[active], pivots[active], V[active], pi[active] = lu_a, piv_a, Va, new
        active = active[(new != pa).any(-1)]
        if active.numel() == 0:
            break
    else:
        raise RuntimeError(f"policy iteration did not converge in {max_iter} iterations")
    Q = c + mdp.gamma * mdp.expected_next(V)
    # Occupancy: (I - gamma P_pi)^T d = mu0, with the factorization of the final evaluation.
    d = torch.linalg.lu_solve(lu, pivots, mdp.mu0.expand(B, S).unsqueeze(-1), adjoint=True).squeeze(-1)
    nu = torch.zeros_like(c).scatter_(-1, pi.unsqueeze(-1), d.unsqueeze(-1))
    return ExactSolution(V @ mdp.mu0, V, Q, pi, nu)


def solve_exact(mdp: TabularMDP, c: torch.Tensor, tie_tol: float = TIE_TOL) -> ExactSolution:
    """Solves the follower's problem exactly for every reward tensor in the batch.

    Args:
        mdp: The MDP.
        c: Rewards ``[..., S, A]``; leading dimensions are flattened into one batch and restored.

    Returns:
        An :class:`ExactSolution` whose tensors carry the leading dimensions of ``c``.
    """
    mdp.check_rewards(c)
    lead = c.shape[:-2]
    flat = c.reshape(-1, *mdp.shape).to(mdp.dtype)
    if mdp.levels is not None:
        sol = backward_induction(mdp, flat, tie_tol)
    else:
        sol = policy_iteration(mdp, flat, tie_tol)
    return ExactSolution(
        sol.value.reshape(lead),
        sol.values.reshape(*lead, -1),
        sol.q.reshape(*lead, *mdp.shape),
        sol.policy.reshape(*lead, -1),
        sol.occupancy.reshape(*lead, *mdp.shape),
    )


def solve_lp_highs(mdp: TabularMDP, c: torch.Tensor) -> tuple[float, np.ndarray]:
    """Solves the occupancy LP (paper, equation 2) for one reward matrix with SciPy's HiGHS.

    ``max c . nu  s.t.  M nu = mu0, nu >= 0`` with the flow matrix of :meth:`TabularMDP.flow_matrix`.

    Args:
        mdp: The MDP.
        c: Rewards ``[S, A]``.

    Returns:
        The optimal value and an optimal occupancy as a ``[S, A]`` NumPy array.

    Raises:
        RuntimeError: If HiGHS does not report an optimal solution.
    """
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    mdp.check_rewards(c)
    M = mdp.flow_matrix().cpu()
    idx = M.indices().numpy()
    A_eq = coo_matrix((M.values().numpy(), (idx[0], idx[1])), shape=tuple(M.shape)).tocsr()
    res = linprog(
        -c.detach().cpu().double().flatten().numpy(),
        A_eq=A_eq,
        b_eq=mdp.mu0.cpu().double().numpy(),
        bounds=(0, None),
        method="highs",
    )
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed on the occupancy LP: {res.message}")
    return -float(res.fun), res.x.reshape(mdp.shape)
