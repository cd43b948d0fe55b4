"""Times the inner work of one regularized-LP optimization step, per backend of the follower solver.

One step of the paper's first-order method (section 4, "Regularized linear program") samples 20 type
profiles and solves, for each, the ``n + 1`` entropy-regularized follower problems (all agents, and
each agent removed), i.e. ``B = 20 (n + 1)`` reward tensors ``c = sum_i r_i + b`` (weights 1,
boosts ``b ~ U[0, 1]``, the paper's initialization), then backpropagates a linear functional of the
occupancies. This script times that forward + backward for the native backend (what
``backend="auto"`` picks: the closed-form ``tree`` on sales and scheduling, dual ``newton`` on the
gridworld) and for ``cvxpylayers`` (Clarabel, implicit-function backward), on the largest cell of
each setting and the 8 x 8 gridworld, and prints a table with the speed-up measured in the same run.
The problems go in as training passes them, grouped by profile (``grouped=True``: on MDPs with
cycles and at least 40 states ``newton`` starts the problems without an agent from the full
problem's duals); ``ungrouped`` times the same batch passed flat, each problem from its own warm
start. Building the layer
(one-off) is timed separately and excluded from the per-step times. Torch runs single-threaded by
default (``--threads``), and the allocator is tuned as in training (``--default-allocator`` keeps
glibc's settings); diffcp solves the batch's cone programs in its own thread pool (one
thread per CPU). ``max |dnu|`` is the largest occupancy difference between the two backends and
``grad err`` the largest gradient difference relative to the largest gradient entry.

    python scripts/bench_regularized.py --repeats 3 [--cells gridworld:5:8,seq_sales:2:2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dmd_torch.checks import check_float, check_int
from dmd_torch.envs import make_env
from dmd_torch.regularized import RegularizedSolveError, regularized_occupancy, tree_applicable
from dmd_torch.runtime import tune_allocator

CELLS = "seq_sales:5:3,scheduling:3:5,gridworld:5:4,gridworld:5:8"


def step_inputs(name: str, n: int, size: int, profiles: int, seed: int):
    """The MDP, the ``[P, n + 1, S, A]`` reward tensors (full problem first) and a random functional ``w``."""
    setting = make_env(name, n_agents=n, size=size)
    mdp = setting.mdp
    gen = torch.Generator().manual_seed(seed)
    r = setting.rewards(setting.sample_types(profiles, gen)).to(mdp.dtype)  # [P, n, S, A]
    b = torch.rand(*mdp.shape, generator=gen, dtype=mdp.dtype)
    full = r.sum(1) + b  # [P, S, A]
    without = full.unsqueeze(1) - r  # agent i removed: [P, n, S, A]
    c = torch.cat([full.unsqueeze(1), without], 1)  # [P, n + 1, S, A]
    w = torch.randn(c.shape, generator=gen, dtype=mdp.dtype)
    return mdp, c, w


def one_step(mdp, c: torch.Tensor, w: torch.Tensor, alpha: float, backend: str, grouped: bool = True):
    """Seconds for forward + backward, the occupancies and the gradient ``d<w, nu>/dc``."""
    x = c.clone().requires_grad_()
    start = time.perf_counter()
    nu = regularized_occupancy(mdp, x, alpha, backend=backend, grouped=grouped)
    (nu * w).sum().backward()
    return time.perf_counter() - start, nu.detach(), x.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per backend (median reported)")
    parser.add_argument("--profiles", type=int, default=20, help="type profiles per step")
    parser.add_argument("--alpha", type=float, default=0.01, help="entropy weight")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (0: leave as is); the tensors are small, so 1 is fastest",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cells", default=CELLS, help="comma list of setting:n:size")
    parser.add_argument("--skip-cvxpylayers", action="store_true", help="time the native backend only")
    parser.add_argument("--default-allocator", action="store_true",
                        help="keep glibc's default malloc settings (training calls dmd_torch.runtime.tune_allocator)")
    args = parser.parse_args()
    try:
        check_int("--repeats", args.repeats)
        check_int("--profiles", args.profiles)
        check_float("--alpha", args.alpha)
        cells = [(name, int(n), int(size)) for name, n, size in (cell.split(":") for cell in args.cells.split(","))]
    except ValueError as exc:
        parser.error(f"{exc} (--cells takes setting:n:size,...)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    tuned = not args.default_allocator and tune_allocator()

    header = (
        f"{'setting':<11} {'n':>2} {'size':>4} {'S':>4} {'A':>2} {'B':>4}  {'native':<7} {'native s/step':>13} {'ungrouped':>9} {'ratio':>5}"
        f"  {'layer build s':>13} {'cvxpylayers s/step':>18} {'speed-up':>9} {'max |dnu|':>10} {'grad err':>9}"
    )
    print(f"alpha = {args.alpha}, {args.profiles} profiles per step, median of {args.repeats} steps, "
          f"{torch.get_num_threads()} torch threads, allocator {'tuned' if tuned else 'default'}")
    print(header)
    print("-" * len(header))
    for name, n, size in cells:
        mdp, c, w = step_inputs(name, n, size, args.profiles, args.seed)
        native = "tree" if tree_applicable(mdp) else "newton"
        one_step(mdp, c, w, args.alpha, native)  # warm-up (per-MDP structure)
        times = []
        for _ in range(args.repeats):
            t, nu_native, g_native = one_step(mdp, c, w, args.alpha, native)
            times.append(t)
        t_native = statistics.median(times)
        flat = statistics.median(one_step(mdp, c, w, args.alpha, native, grouped=False)[0] for _ in range(args.repeats))
        build = layer = speedup = diff = grad_err = "-"
        if not args.skip_cvxpylayers:
            try:
                start = time.perf_counter()
                one_step(mdp, c[:1, :1], w[:1, :1], args.alpha, "cvxpylayers")  # builds and caches the layer
                build = f"{time.perf_counter() - start:.2f}"
                times = []
                for _ in range(args.repeats):
                    t, nu_layer, g_layer = one_step(mdp, c, w, args.alpha, "cvxpylayers")
                    times.append(t)
                t_layer = statistics.median(times)
                layer, speedup = f"{t_layer:.3f}", f"{t_layer / t_native:.0f}x"
                diff = f"{float((nu_layer - nu_native).abs().max()):.1e}"
                grad_err = f"{float((g_layer - g_native).abs().max() / g_native.abs().max()):.1e}"
            except RegularizedSolveError as exc:
                layer = f"failed: {exc}"
        print(
            f"{name:<11} {n:>2} {size:>4} {mdp.num_states:>4} {mdp.num_actions:>2} {c.shape[0] * c.shape[1]:>4}  "
            f"{native:<7} {t_native:>13.4f} {flat:>9.4f} {flat / t_native:>5.2f}  {build:>13} {layer:>18} {speedup:>9} {diff:>10} {grad_err:>9}"
        )


if __name__ == "__main__":
    main()
