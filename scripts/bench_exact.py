"""Benchmark of exact evaluation: prints ratios measured side by side in one run.

1. For one cell of each setting: the exact outcome (:meth:`~dmd_torch.AMA.outcome`: policy, values,
   payments, revenue, loss; all ``n + 1`` follower problems per profile answered, batched) of
   ``--profiles`` profiles against solving the same profiles' occupancy LPs with SciPy's HiGHS
   (the LPs of ``--lp-profiles`` of them, timed per LP and extrapolated), and the speed-up: first
   with HiGHS solving the problems the exact path solves (the full one, and those without each
   agent except where ``asw^(-i) = asw`` is certified without a solve,
   :func:`~dmd_torch.follower.certified_without`; "LPs/profile", counted over all profiles),
   then with HiGHS solving all ``n + 1``.
2. The VCG column of the paper's Tables 1-5 (32 cells, ``--profiles`` profiles each), timed.
3. Grid search's batches on the gridworld (a Sobol candidate's ``n + 1`` problems on 2,000
   profiles): policy iteration from its default start against the start of
   :func:`~dmd_torch.exact.mean_reward_policy`, same values checked, and the speed-up.
4. The same batches on sequential sales: all ``n + 1`` problems solved with their policies against
   the full problem with its policy and the ``n`` others for their values only
   (:func:`~dmd_torch.exact.optimal_values`), same values checked, and the speed-up.

With ``--device cuda`` the exact path of parts 1 and 2 runs on a GPU (HiGHS, and parts 3 and 4,
on the CPU).

Exact evaluation is timed over ``--repeats`` passes after a first one (its rate is printed too:
it includes lazy imports and the first touch of the memory), each followed by the HiGHS solves,
so that load changes of a shared machine hit both sides; rates are medians, and each speed-up is
the median of the per-round ratios. The allocator settings are those of the library's scripts
(:func:`dmd_torch.runtime.tune_allocator`) unless ``--default-allocator``.

Usage: ``python scripts/bench_exact.py [--profiles 10000] [--lp-profiles 40] [--repeats 5] [--device cuda]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dmd_torch import AMA, make_env
from dmd_torch.checks import check_device, check_int
from dmd_torch.evaluation import objective_values, profile_chunk
from dmd_torch.exact import mean_reward_policy, optimal_values, solve_exact, solve_lp_highs
from dmd_torch.follower import affine_problems, affine_rewards, certified_without
from dmd_torch.methods.grid import GridSearch, sobol_candidates
from dmd_torch.runtime import tune_allocator

CELLS = [("seq_sales", 5, 3, "symmetric"), ("scheduling", 3, 5, "symmetric"), ("gridworld", 5, 4, "one_cell")]
TABLES = [
    ("seq_sales", "symmetric", [(n, m) for m in (2, 3) for n in (2, 3, 4, 5)]),
    ("seq_sales", "asymmetric", [(n, m) for m in (2, 3) for n in (2, 3, 4, 5)]),
    ("scheduling", "symmetric", [(2, 4), (2, 5), (3, 4), (3, 5)]),
    ("scheduling", "asymmetric", [(2, 4), (2, 5), (3, 4), (3, 5)]),
    ("gridworld", "one_cell", [(n, m) for m in (3, 4) for n in (2, 3, 4, 5)]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--lp-profiles", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds after the first exact pass, each an exact pass and the HiGHS solves (medians)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="where the exact path of parts 1 and 2 runs: cpu, cuda or cuda:N")
    parser.add_argument("--default-allocator", action="store_true",
                        help="keep glibc's default malloc settings (the library's scripts call dmd_torch.runtime.tune_allocator)")
    args = parser.parse_args()
    if not 1 <= args.lp_profiles <= args.profiles:
        parser.error(f"--lp-profiles must lie in [1, --profiles = {args.profiles}], got {args.lp_profiles}")
    try:
        check_int("--repeats", args.repeats)
        device = check_device("--device", args.device)
    except ValueError as exc:
        parser.error(str(exc))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = not args.default_allocator and tune_allocator()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, allocator {'tuned' if tuned else 'default'}, "
          f"exact path on {device}")
    print(f"\n{'cell':<28}{'1st pass/s':>11}{'exact prof/s':>13}{'LPs/profile':>12}{'HiGHS prof/s':>13}{'speed-up':>9}"
          f"{'all n+1 LPs/s':>14}{'speed-up':>9}")
    for name, n, m, dist in CELLS:
        env = make_env(name, n_agents=n, size=m, distribution=dist)  # HiGHS's, on the CPU
        ama = AMA.vcg(make_env(name, n_agents=n, size=m, distribution=dist).to(device)).to(device)
        types = env.sample_types(args.profiles, torch.Generator().manual_seed(args.seed))
        chunks = types.to(device).split(profile_chunk(env))

        def exact_pass() -> float:  # the whole outcome: policy, values, payments, revenue, loss
            t0 = time.perf_counter()
            for chunk in chunks:
                ama.outcome(chunk)
            sync()
            return time.perf_counter() - t0

        cold_rate = args.profiles / exact_pass()  # also the warm-up (lazy imports, first touch of memory)
        # the problems the exact path solves: the full one, and those without the agents for whom
        # asw^(-i) = asw is not certified without a solve (follower.certified_without)
        solved = torch.cat([
            torch.cat([torch.ones(len(t), 1, dtype=torch.bool),
                       ~certified_without(env.mdp, env.rewards(t.cpu()), ama.outcome(t).agent_values.cpu())], dim=1)
            for t in chunks
        ])
        lps_per_profile = float(solved.sum()) / args.profiles  # over all profiles, not just HiGHS's subset
        lp_types = types[: args.lp_profiles]
        c = affine_rewards(env.rewards(lp_types), ama.weights.detach().cpu(), ama.boosts.detach().cpu())  # [P, n + 1, S, A]
        solve_lp_highs(env.mdp, c[0, :1])  # warm-up: SciPy's lazy imports stay out of the timing
        lp_sets = ((c[solved[: args.lp_profiles]], lps_per_profile), (c.flatten(0, 1), n + 1.0))
        exact_rates, highs_rates = [], [[], []]
        for _ in range(args.repeats):  # interleaved, so that the machine's load changes hit both sides
            exact_rates.append(args.profiles / exact_pass())
            for k, (problems, per_profile) in enumerate(lp_sets):
                t0 = time.perf_counter()
                solve_lp_highs(env.mdp, problems)
                seconds_per_lp = (time.perf_counter() - t0) / len(problems)
                highs_rates[k].append(1.0 / (seconds_per_lp * per_profile))  # HiGHS profiles per second
        exact_rate = statistics.median(exact_rates)
        rates = [statistics.median(h) for h in highs_rates]
        speedups = [statistics.median(e / h for e, h in zip(exact_rates, hs)) for hs in highs_rates]
        label = f"{name} {dist} n={n} m={m}"
        print(f"{label:<28}{cold_rate:>11.0f}{exact_rate:>13.0f}{lps_per_profile:>12.2f}{rates[0]:>13.1f}"
              f"{speedups[0]:>8.0f}x{rates[1]:>14.1f}{speedups[1]:>8.0f}x")
    print(f"\nVCG column of Tables 1-5, {args.profiles} profiles per cell:")
    total = 0.0
    for name, dist, cells in TABLES:
        t_table = 0.0
        for n, m in cells:
            env = make_env(name, n_agents=n, size=m, distribution=dist).to(device)
            types = env.sample_types(args.profiles, torch.Generator().manual_seed(args.seed)).to(device)
            t0 = time.perf_counter()
            objective_values(AMA.vcg(env).to(device), types)
            sync()
            t_table += time.perf_counter() - t0
        total += t_table
        print(f"  {name} {dist:<11} {len(cells):>2} cells {t_table:7.2f} s")
    print(f"  all 32 cells            {total:7.2f} s")
    print("\nPolicy iteration in grid search (gridworld, 4 Sobol candidates x 2000 profiles x (n + 1) problems):")
    print(f"{'cell':<28}{'default start':>14}{'mean start':>12}{'speed-up':>11}")
    for n, m in ((2, 3), (5, 4)):
        env = make_env("gridworld", n_agents=n, size=m)
        grid = GridSearch(num_points=4, refine_rounds=0)  # Sobol points only
        types = grid.training_profiles(env, args.seed)
        lw, b = sobol_candidates(AMA(env), grid.config.num_points, args.seed)
        r = env.rewards(types)
        times = {}
        for label in ("default", "mean"):
            values = []
            t0 = time.perf_counter()
            for k in range(grid.config.num_points):  # one candidate per batch, as grid search does for 2000 profiles
                c = affine_rewards(r, lw[k].exp(), b[k])  # [P, n + 1, S, A]
                start = mean_reward_policy(env.mdp, c, (0, 1)) if label == "mean" else None
                values.append(solve_exact(env.mdp, c, occupancy=False, init_policy=start).value)
            times[label] = (time.perf_counter() - t0, torch.stack(values))
        assert torch.allclose(times["default"][1], times["mean"][1], rtol=1e-12, atol=1e-12)
        td, tm = times["default"][0], times["mean"][0]
        print(f"{f'gridworld n={n} m={m}':<28}{td:>12.2f} s{tm:>10.2f} s{td / tm:>10.1f}x")
    print("\nGrid search's n + 1 problems (sequential sales, 4 Sobol candidates x 2000 profiles):")
    print(f"{'cell':<28}{'all policies':>14}{'values only':>13}{'speed-up':>10}")
    for n, m, dist in ((3, 2, "symmetric"), (5, 3, "asymmetric")):
        env = make_env("seq_sales", n_agents=n, size=m, distribution=dist)
        grid = GridSearch(num_points=4, refine_rounds=0)  # Sobol points only
        types = grid.training_profiles(env, args.seed)
        lw, b = sobol_candidates(AMA(env), grid.config.num_points, args.seed)
        r = env.rewards(types)
        t_all = t_split = 0.0
        for k in range(grid.config.num_points):
            t0 = time.perf_counter()
            every = solve_exact(env.mdp, affine_rewards(r, lw[k].exp(), b[k]), occupancy=False).value  # [P, n + 1]
            t_all += time.perf_counter() - t0
            t0 = time.perf_counter()
            total, minus = affine_problems(r, lw[k].exp(), b[k])
            full = solve_exact(env.mdp, total, occupancy=False).value
            without = optimal_values(env.mdp, minus)
            t_split += time.perf_counter() - t0
            assert torch.allclose(every, torch.cat([full.unsqueeze(-1), without], -1), rtol=1e-12, atol=1e-12)
        label = f"seq_sales {dist} n={n} m={m}"
        print(f"{label:<28}{t_all:>12.2f} s{t_split:>11.2f} s{t_all / t_split:>9.1f}x")


if __name__ == "__main__":
    main()
