"""Scaling benchmark: time and peak memory of exact evaluation and of one training step per method
as the sizes grow, the cost model's constants fitted from them, and the largest sizes that fit.

For every size of every setting (sales n 2..8 x m 2..5, scheduling n 2..5 x T 3..6, gridworld
g 3..8 x 2..5 agents, matching n 2..4 x m 2..4, static auctions n 1..5 x m 1..4; ``--quick``
runs a subset), in a fresh process
each (so that peak memory is that size's own, glibc's default allocator):

* exact evaluation of ``--profiles`` profiles (the mechanism at its initial parameters): where a
  first pass on ``--probe`` profiles predicts more than ``--max-seconds``, the time is
  extrapolated linearly from it and marked ``~``;
* one training step of ``reg_lp`` and ``zeroth_order`` at their defaults: the time of a run of
  ``2k`` steps less that of ``k`` steps, over ``k``, each the faster of two runs (a run's setup and
  first-touch costs cancel; ``k`` steps take about half a second), and one grid candidate at the
  defaults' profiles (the same difference between searches of ``2k`` and ``k`` candidates);
* the peak resident memory above the process's baseline, sampled every 2 ms.

The model of :mod:`dmd_torch.cost` is fitted per setting: each time as ``overhead + rate x
elements``, the regularized LP's step with a third term ``rate x profiles x problems x N^3`` in the
order ``N`` of its Newton systems (nonnegative least squares on relative errors), memory as the
largest bytes per element held.
``--write-model`` writes the constants to ``dmd_torch/data/cost_model.json`` (whole, then
renamed). The script then prints, per setting and method, the largest size whose default training
run the model puts within ``--budget`` seconds (10 minutes), and a Markdown table of the
measurements (``docs/benchmarks.md``, "Scaling").

``--check DIR`` instead compares the model's estimate with the ``runtime_seconds`` of every
finished run below ``DIR`` (e.g. ``outputs``) and prints the ratios' median and range per variant.

Usage: ``python scripts/bench_scaling.py [--quick] [--write-model] [--settings seq_sales,gridworld]``
or ``python scripts/bench_scaling.py --check outputs``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SIZES = {
    "seq_sales": [(n, m) for m in range(2, 6) for n in range(2, 9)],
    "scheduling": [(n, t) for t in range(3, 7) for n in range(2, 6)],
    "gridworld": [(n, g) for g in range(3, 9) for n in range(2, 6)],
    "matching": [(n, m) for m in range(2, 5) for n in range(2, 5)],
    "static_auction": [(n, m) for m in range(1, 5) for n in range(1, 6)],
}
QUICK = {
    "seq_sales": [(2, 2), (4, 3), (6, 3), (5, 4)],
    "scheduling": [(2, 3), (3, 5), (4, 5)],
    "gridworld": [(2, 3), (3, 5), (5, 8)],
    "matching": [(2, 2), (3, 3)],
    "static_auction": [(2, 1), (2, 3)],
}
OPTIONS = {"seq_sales": {}, "scheduling": {}, "gridworld": {}, "matching": {}, "static_auction": {}}
STEP_METHODS = ("reg_lp", "zeroth_order")
MODEL = Path(__file__).resolve().parents[1] / "dmd_torch" / "data" / "cost_model.json"


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * 4096


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every 2 ms by a thread."""

    def __enter__(self) -> PeakMemory:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def bytes(self) -> int:
        return self.peak - self.base


def per_unit(timed: Callable[[int], float], k: int) -> float:
    """Seconds per unit of work: ``timed(2k) - timed(k)`` over ``k``, each the faster of two calls, so
    that the setup of a call cancels (its whole time over ``2k`` where noise leaves no difference)."""
    short, long = min(timed(k), timed(k)), min(timed(2 * k), timed(2 * k))
    return (long - short) / k if long > short else long / (2 * k)


def measure(name: str, n: int, m: int, profiles: int, probe: int, max_seconds: float, queue: mp.Queue) -> None:
    """Measures one size in this (fresh) process and puts a dict on ``queue``."""
    import torch

    from dmd_torch import AMA, make_env
    from dmd_torch.cost import elements, problems
    from dmd_torch.evaluation import objective_values
    from dmd_torch.methods import make_method
    from dmd_torch.regularized import newton_system_size

    torch.set_num_threads(1)
    out: dict = {"setting": name, "n": n, "m": m}
    try:
        setting = make_env(name, n_agents=n, size=m, **OPTIONS[name])
    except ValueError as err:
        queue.put({**out, "error": str(err)})
        return
    S, A = setting.mdp.shape
    E = elements(n, S, A, setting.objective.needs_without)
    out.update(states=S, actions=A, elements=E)
    gen = torch.Generator().manual_seed(0)
    ama = AMA(setting)
    types = setting.checked_sample(max(profiles, probe), gen)
    objective_values(ama, types[:2])  # lazy imports, first touch
    with PeakMemory() as mem:
        t = time.perf_counter()
        objective_values(ama, types[:probe])
        t_probe = time.perf_counter() - t
        rows = probe
        if t_probe * profiles / probe <= max_seconds:
            t = time.perf_counter()
            objective_values(ama, types[:profiles])
            t_eval, rows, out["extrapolated"] = time.perf_counter() - t, profiles, False
        else:
            t_eval, out["extrapolated"] = t_probe * profiles / probe, True
    out.update(eval_s=t_eval, eval_profiles=profiles, eval_rows=rows, eval_bytes=mem.bytes)
    held = setting.checked_sample(2, gen)
    step_bytes = 0
    out.update(problems=problems(n, setting.objective.needs_without), newton_n=newton_system_size(setting.mdp))
    for method in STEP_METHODS:
        def run(steps: int) -> float:  # seconds of a run of ``steps`` steps from one start
            t = time.perf_counter()
            make_method(method, steps=steps, eval_every=steps, multistart={"starts": 1}).run(
                AMA(setting), heldout=held, seed=0)
            return time.perf_counter() - t

        run(1)  # lazy imports, first touch
        with PeakMemory() as mem:  # the sampling thread would slow small steps: memory from one step only
            first = run(1)
        step_bytes = max(step_bytes, mem.bytes)
        out[f"{method}_step_s"] = per_unit(run, max(2, min(200, int(0.5 / first))))
        out[f"{method}_pps"] = make_method(method).config.profiles_per_step
    def search(points: int) -> float:  # seconds of a grid search of ``points`` candidates
        t = time.perf_counter()
        make_method("grid", num_points=points, refine_rounds=0, screen_profiles=0).run(AMA(setting), heldout=held, seed=0)
        return time.perf_counter() - t

    grid_profiles = make_method("grid").config.profiles
    k = max(1, min(100, int(1.0 / max(1e-9, t_eval / profiles * grid_profiles))))
    out.update(grid_candidate_s=per_unit(search, k), grid_profiles=grid_profiles,
               step_bytes=step_bytes)
    queue.put(out)


def run_size(name: str, n: int, m: int, args: argparse.Namespace) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(name, n, m, args.profiles, args.probe, args.max_seconds, queue))
    proc.start()
    proc.join(args.timeout)
    if proc.is_alive():
        proc.kill()
        return {"setting": name, "n": n, "m": m, "error": f"over {args.timeout:.0f} s"}
    if queue.empty():
        return {"setting": name, "n": n, "m": m, "error": f"exit code {proc.exitcode} (out of memory?)"}
    return queue.get()


def fit(columns: list[list[float]], t: list[float]) -> list[float]:
    """``[overhead, rate_1, ...]`` of ``t ~ overhead + sum_j rate_j * columns[j]``, nonnegative least
    squares on relative errors."""
    from scipy.optimize import nnls

    T = np.asarray(t, dtype=float)
    design = np.stack([np.ones_like(T), *(np.asarray(c, dtype=float) for c in columns)], 1) / T[:, None]
    coef, _ = nnls(design, np.ones_like(T))
    return [float(x) for x in coef]


def model_of(rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r]
    eval_o, eval_s = fit([[r["eval_profiles"] * r["elements"] for r in ok]], [r["eval_s"] for r in ok])
    steps = {}
    for method in STEP_METHODS:
        linear = [r[f"{method}_pps"] * r["elements"] for r in ok]
        cubic = [r[f"{method}_pps"] * r["problems"] * r["newton_n"] ** 3 for r in ok]
        times = [r[f"{method}_step_s"] for r in ok]
        steps[method] = fit([linear, cubic], times) if method == "reg_lp" and any(cubic) else [*fit([linear], times), 0.0]
    grid_o, grid_s = fit([[r["grid_profiles"] * r["elements"] for r in ok]], [r["grid_candidate_s"] for r in ok])
    from dmd_torch.runtime import MAX_BATCH_ELEMENTS

    per_element = [r["eval_bytes"] / min(MAX_BATCH_ELEMENTS, r["eval_rows"] * r["elements"]) for r in ok
                   if r["eval_rows"] * r["elements"] >= 100_000]
    return {
        "eval_s": eval_s, "eval_overhead_s": eval_o,
        "step_s": {k: v[1] for k, v in steps.items()}, "step_overhead_s": {k: v[0] for k, v in steps.items()},
        "step_cubic_s": {k: v[2] for k, v in steps.items()},
        "grid_s": grid_s, "grid_overhead_s": grid_o,
        "bytes_per_element": max(per_element, default=64.0),
        "measured": [[r["n"], r["m"]] for r in ok],
    }


def largest_within(name: str, budget: float) -> dict[str, str]:
    """Per method, the largest size (most elements) of a wider range whose default run the model
    puts within ``budget`` seconds."""
    from dmd_torch import make_env
    from dmd_torch.cost import estimate
    from dmd_torch.envs import ENVS
    from dmd_torch.methods import make_method

    sizes = {"seq_sales": [(n, m) for n in range(2, 13) for m in range(2, 7)],
             "scheduling": [(n, t) for n in range(2, 9) for t in range(3, 9)],
             "gridworld": [(n, g) for n in range(2, 9) for g in range(3, 16)],
             "matching": [(n, m) for n in range(2, 6) for m in range(2, 6)],
             "static_auction": [(n, m) for n in range(1, 9) for m in range(1, 8)]}[name]
    best: dict[str, tuple[float, str]] = {}
    for n, m in sizes:
        shape = ENVS[name].shape_of(n_agents=n, size=m, **OPTIONS[name])
        if shape is not None and shape[0] * shape[1] * (n + 1) > 5e7:  # far past 10 minutes: not built
            continue
        try:
            setting = make_env(name, n_agents=n, size=m, **OPTIONS[name])
        except (ValueError, MemoryError):
            continue
        S, A = setting.mdp.shape
        for method in ("grid", "zeroth_order", "reg_lp"):
            est = estimate(setting, make_method(method))
            if est.total_s <= budget:
                size = S * A * (n + 1)
                if method not in best or size > best[method][0]:
                    best[method] = (size, f"n={n}, size={m} ({est.total_s / 60:.1f} min)")
    return {k: v[1] for k, v in best.items()}


def check(root: Path) -> None:
    """The model's estimate against the measured wall time of the runs below ``root``."""
    import statistics

    from dmd_torch.cost import estimate
    from dmd_torch.envs import setting_from_config
    from dmd_torch.methods import make_method
    from dmd_torch.results import RESULTS_FILE, read_result

    ratios: dict[str, list[float]] = {}
    for path in sorted(root.rglob(RESULTS_FILE)):
        run = read_result(path)
        if run.training is None:
            continue
        setting = setting_from_config(run.env)
        method = make_method(run.training.method, **{k: v for k, v in run.training.config.items() if k != "name"})
        est = estimate(setting, method, run.training.heldout_profiles, run.evaluation.profiles)
        ratios.setdefault(f"{setting.name} {run.label}", []).append(est.total_s / run.training.runtime_seconds)
    if not ratios:
        raise SystemExit(f"no finished runs below {root}")
    every = [x for v in ratios.values() for x in v]
    print(f"estimate / measured over {len(every)} runs: median {statistics.median(every):.2f}, "
          f"range {min(every):.2f}-{max(every):.2f}")
    for label, v in sorted(ratios.items()):
        print(f"  {label}: {len(v)} runs, median {statistics.median(v):.2f}, range {min(v):.2f}-{max(v):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(SIZES))
    parser.add_argument("--quick", action="store_true", help="a few sizes per setting")
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--probe", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=20.0, help="longest exact evaluation run in full")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per size")
    parser.add_argument("--budget", type=float, default=600.0, help="a default run's time budget (s)")
    parser.add_argument("--write-model", action="store_true", help=f"write the constants to {MODEL}")
    parser.add_argument("--check", type=Path, help="compare the model with the finished runs below this directory")
    args = parser.parse_args()
    if args.check is not None:
        check(args.check)
        return
    names = [s for s in args.settings.split(",") if s]
    unknown = sorted(set(names) - set(SIZES))
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(SIZES)}")
    table = ["| setting | n | size | S | A | elements/profile | exact eval (s) | eval peak (MiB) | reg_lp step (ms) "
             "| zeroth_order step (ms) | grid candidate (ms) | step peak (MiB) |", "|" + "---|" * 12]
    models = {}
    for name in names:
        rows = []
        for n, m in (QUICK if args.quick else SIZES)[name]:
            r = run_size(name, n, m, args)
            rows.append(r)
            if "error" in r:
                print(f"{name} n={n} size={m}: {r['error']}", flush=True)
                table.append(f"| {name} | {n} | {m} | — | — | — | {r['error']} | | | | | |")
                continue
            mark = "~" if r["extrapolated"] else ""
            line = (f"| {name} | {n} | {m} | {r['states']} | {r['actions']} | {r['elements']} | {mark}{r['eval_s']:.2f} "
                    f"| {r['eval_bytes'] / 2**20:.0f} | {1e3 * r['reg_lp_step_s']:.1f} | {1e3 * r['zeroth_order_step_s']:.1f} "
                    f"| {1e3 * r['grid_candidate_s']:.1f} | {r['step_bytes'] / 2**20:.0f} |")
            table.append(line)
            print(line, flush=True)
        if any("error" not in r for r in rows):
            models[name] = model_of(rows)
    print("\n".join(["", *table, ""]))
    if args.write_model:
        from dmd_torch.files import write_json

        old = json.loads(MODEL.read_text()) if MODEL.exists() else {"settings": {}}
        old["settings"].update(models)
        old["note"] = "constants of dmd_torch.cost, fitted by scripts/bench_scaling.py (2 cores, 1 torch thread)"
        write_json(MODEL, old)
        print(f"wrote {MODEL}")
        from dmd_torch import cost

        cost._models.cache_clear()
    for name, model in models.items():
        print(f"{name}: eval {model['eval_s']:.3g} s/element (+{model['eval_overhead_s']:.3g} s), "
              + ", ".join(f"{k} step {v:.3g} s/element (+{model['step_cubic_s'][k]:.3g} s per problem x N^3)"
                          for k, v in model["step_s"].items())
              + f", grid {model['grid_s']:.3g} s/element, {model['bytes_per_element']:.0f} bytes/element")
    if args.write_model:
        print(f"\nlargest size whose default training run fits in {args.budget / 60:.0f} min (model):")
        for name in models:
            print(f"  {name}: " + "; ".join(f"{k}: {v}" for k, v in largest_within(name, args.budget).items()))


if __name__ == "__main__":
    main()
