"""Scaling benchmark: time and peak memory of exact evaluation and of one training step per method
as the sizes grow, the cost model's constants fitted from them, and the largest sizes that fit.

For every size of every setting (sales n 2..8 x m 2..5, scheduling n 2..5 x T 3..6, gridworld
g 3..8, 10, 12 x 2..5 agents (the larger grids show the regularized LP's S^3 growth), matching
n 2..4 x m 2..4, static auctions n 1..5 x m 1..4; ``--quick`` runs a subset), in a fresh process
each:

* the peak resident memory above the process's baseline, sampled every 2 ms, with glibc's default
  allocator (so that it is that size's own): of exact evaluation, and of a one-step run of each
  gradient method (the sampling thread would slow small steps);
* then, with the allocator tuned as the library's programs run (:func:`dmd_torch.runtime.tune_allocator`),
  the times: exact evaluation of ``--probe`` and of ``--profiles`` profiles (the mechanism at its
  initial parameters; where the probe predicts more than ``--max-seconds``, the full pass is
  extrapolated linearly from it and marked ``~``);
* one training step of ``reg_lp`` and ``zeroth_order`` at their defaults: the time of a run of
  ``2k`` steps less that of ``k`` steps, over ``k`` (a run's setup and first-touch costs cancel),
  and one candidate of the default grid search and of the paper's (the same difference between
  searches of ``2k`` and ``k`` candidates; "refused" where the search space is wider than
  Sobol's); each time the median of three runs where a run takes under 2 s, ``k`` doubled until
  the difference stands above the noise.

The model of :mod:`dmd_torch.cost` is fitted per setting by nonnegative least squares on relative
errors: exact evaluation as ``rate x elements + per-solve x batched solves``; a training step as
``overhead + rate x elements``, the regularized LP's with a third term ``rate x profiles x problems
x N^3`` in the order ``N`` of its Newton systems; a grid candidate as the batched solves and the
elements it adds to a search (:meth:`dmd_torch.config.GridConfig.scorings`); memory as the largest
bytes per element held.
``--write-model`` writes the constants to ``dmd_torch/data/cost_model.json`` (whole, then
renamed). The script then prints, per setting and method, the largest size whose default training
run the model puts within ``--budget`` seconds (10 minutes), and a Markdown table of the
measurements (``docs/benchmarks.md``, "Scaling").

``--device cuda`` measures on a GPU instead (peak memory: what torch allocates on the device); the
cost model stays the CPU's (``--write-model`` is refused there).

``--check DIR`` instead compares the model's estimate with the ``runtime_seconds`` of every
finished run below ``DIR`` (e.g. ``outputs``) and prints the ratios' median and range per variant.

Usage: ``python scripts/bench_scaling.py [--quick] [--write-model] [--settings seq_sales,gridworld] [--sizes 7x5,8x5] [--device cuda]``
or ``python scripts/bench_scaling.py --check outputs``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SIZES = {
    "seq_sales": [(n, m) for m in range(2, 6) for n in range(2, 9)],
    "scheduling": [(n, t) for t in range(3, 7) for n in range(2, 6)],
    "gridworld": [(n, g) for g in (*range(3, 9), 10, 12) for n in range(2, 6)],
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
    """Peak resident memory above the level at entry, sampled every 2 ms by a thread; on a CUDA
    ``device``, the peak of the device memory torch allocates instead."""

    def __init__(self, device: str = "cpu") -> None:
        self.cuda = device.startswith("cuda")

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = self.peak = torch.cuda.memory_allocated()
            return self
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def bytes(self) -> int:
        return self.peak - self.base


def per_unit(timed: Callable[[int], float], k: int, cap: int) -> tuple[float, int]:
    """Seconds per unit of work and the ``k`` used: ``timed(2k) - timed(k)`` over ``k``, so that the
    setup of a call cancels; each the median of three calls where a call takes under 2 s. ``k``
    doubles (up to ``cap``) until the longer call takes 1.5x the shorter, so that the difference
    stands above the noise (the whole time over ``2k`` where noise leaves no difference)."""
    while True:
        first = timed(k)
        repeats = 3 if first < 2.0 else 1
        short = statistics.median([first, *(timed(k) for _ in range(repeats - 1))])
        long = statistics.median(timed(2 * k) for _ in range(repeats))
        if long >= 1.5 * short or 2 * k > cap:
            return ((long - short) / k if long > short else long / (2 * k)), k
        k *= 2


def measure(name: str, n: int, m: int, profiles: int, probe: int, max_seconds: float, device: str, queue: mp.Queue) -> None:
    """Measures one size in this (fresh) process and puts a dict on ``queue``; where an error stops
    it, the dict says which (the table shows it)."""
    try:
        queue.put(_measure(name, n, m, profiles, probe, max_seconds, device))
    except Exception as err:  # e.g. torch's allocator refusing a batch
        first = (str(err).splitlines() or [""])[0][:160]
        queue.put({"setting": name, "n": n, "m": m, "error": f"{type(err).__name__}: {first}"})


def _measure(name: str, n: int, m: int, profiles: int, probe: int, max_seconds: float, device: str) -> dict:
    """The measurements of one size (module docstring), on ``device``."""
    import torch

    from dmd_torch import AMA, make_env
    from dmd_torch.cost import candidate_solves, problems, setting_elements
    from dmd_torch.evaluation import objective_values, profile_chunk
    from dmd_torch.config import TrainConfig
    from dmd_torch.methods import Method, make_method
    from dmd_torch.regularized import newton_system_size
    from dmd_torch.runtime import tune_allocator
    from dmd_torch.tracking import RunLogger

    LOG_EVERY = TrainConfig.log_every  # the app's default

    torch.set_num_threads(1)
    out: dict = {"setting": name, "n": n, "m": m}
    try:
        setting = make_env(name, n_agents=n, size=m, **OPTIONS[name]).to(device)
    except ValueError as err:
        return {**out, "error": str(err)}
    sync = torch.cuda.synchronize if setting.mdp.device.type == "cuda" else (lambda: None)
    S, A = setting.mdp.shape
    E = setting_elements(setting)
    out.update(states=S, actions=A, elements=E)
    gen = torch.Generator().manual_seed(0)
    ama = AMA(setting).to(device)
    types = setting.checked_sample(max(profiles, probe), gen).to(device)
    objective_values(ama, types[:2])  # lazy imports, first touch

    def timed_eval(rows: int) -> float:
        t = time.perf_counter()
        objective_values(ama, types[:rows])
        sync()
        return time.perf_counter() - t

    held = setting.checked_sample(2, gen).to(device)
    logs = tempfile.TemporaryDirectory()

    def timed_run(method: Method) -> float:  # seconds of a run with the app's logger (TensorBoard, no bar)
        logger = RunLogger(Path(logs.name), method.total_work(), setting, progress=False, log_every=LOG_EVERY)
        t = time.perf_counter()
        method.run(AMA(setting).to(device), heldout=held, seed=0, callback=logger)
        sync()
        elapsed = time.perf_counter() - t
        logger.close()
        return elapsed

    def run(method: str, steps: int) -> float:  # seconds of a run of ``steps`` steps from one start
        return timed_run(make_method(method, steps=steps, eval_every=steps, multistart={"starts": 1}))

    # peak memory first, with glibc's default allocator: this size's own (the sampling thread would
    # slow small steps, so a training step's memory comes from a one-step run)
    with PeakMemory(device) as mem:
        full = timed_eval(probe) * profiles / probe <= max_seconds
        rows = profiles if full else probe
        if full:
            timed_eval(profiles)
    step_bytes = 0
    for method in STEP_METHODS:
        run(method, 1)  # lazy imports, first touch
        with PeakMemory(device) as step_mem:
            run(method, 1)
        step_bytes = max(step_bytes, step_mem.bytes)
    tune_allocator()  # then the times, as the library's programs run (they tune the allocator)
    t_probe = timed_eval(probe)
    t_eval = timed_eval(profiles) if full else t_probe * profiles / probe
    out["extrapolated"] = not full
    chunk = profile_chunk(setting)
    out.update(eval_s=t_eval, eval_profiles=profiles, eval_rows=rows, eval_bytes=mem.bytes,
               eval_solves=-(-profiles // chunk), probe_s=t_probe, probe_profiles=probe, probe_solves=-(-probe // chunk))
    out.update(problems=problems(n, setting.objective.needs_without), newton_n=newton_system_size(setting.mdp))
    for method in STEP_METHODS:
        first = run(method, 1)
        out[f"{method}_step_s"] = per_unit(lambda steps: run(method, steps), max(2, min(200, int(0.5 / first))), 4000)[0]
        out[f"{method}_pps"] = make_method(method).config.profiles_per_step
    out.update(step_bytes=step_bytes, grid=[])
    for variant in ("grid", "grid_paper"):  # the default search (screened, refined) and the paper's
        def search(points: int) -> float:  # seconds of a search of ``points`` candidates
            return timed_run(make_method(variant, num_points=points))

        def work(points: int) -> tuple[int, int]:  # batched solves and elements of that search
            cfg = make_method(variant, num_points=points).config
            return (sum(candidate_solves(E, C, P, cfg.max_batch_elements) for C, P in cfg.scorings()),
                    sum(C * P * E for C, P in cfg.scorings()))

        try:  # e.g. more coordinates than Sobol points have
            make_method(variant).check_setting(setting)
        except ValueError:
            out["grid"].append({"variant": variant, "refused": True})
            continue
        cfg = make_method(variant).config
        least = 2 * cfg.refine_rounds if cfg.refine_rounds else 1  # a point for each local round
        per_candidate = t_eval / profiles * cfg.profiles
        seconds, k = per_unit(search, max(least, min(400, int(1.0 / max(1e-9, per_candidate)))), 8192)
        (s1, e1), (s2, e2) = work(k), work(2 * k)
        out["grid"].append({"variant": variant, "candidate_s": seconds, "solves": (s2 - s1) / k, "elements": (e2 - e1) / k})
    logs.cleanup()
    return out


def run_size(name: str, n: int, m: int, args: argparse.Namespace) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(name, n, m, args.profiles, args.probe, args.max_seconds, args.device, queue))
    proc.start()
    proc.join(args.timeout)
    if proc.is_alive():
        proc.kill()
        return {"setting": name, "n": n, "m": m, "error": f"over {args.timeout:.0f} s"}
    if queue.empty():
        return {"setting": name, "n": n, "m": m, "error": f"exit code {proc.exitcode} (killed: out of memory?)"}
    return queue.get()


def fit(columns: list[list[float]], t: list[float], intercept: bool = True) -> list[float]:
    """``[overhead, rate_1, ...]`` of ``t ~ overhead + sum_j rate_j * columns[j]`` (without
    ``intercept``: ``[rate_1, ...]``), nonnegative least squares on relative errors."""
    from scipy.optimize import nnls

    T = np.asarray(t, dtype=float)
    cols = [np.ones_like(T)] if intercept else []
    design = np.stack([*cols, *(np.asarray(c, dtype=float) for c in columns)], 1) / T[:, None]
    coef, _ = nnls(design, np.ones_like(T))
    return [float(x) for x in coef]


def model_of(rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r]
    # exact evaluation: the probe and the full pass, each its batched solves and its elements
    evals = [(r[f"{k}_solves"], r[f"{k}_profiles"] * r["elements"], r[f"{k}_s"]) for r in ok
             for k in ("probe", "eval") if not (k == "eval" and r["extrapolated"])]
    eval_o, eval_s = fit([[e[0] for e in evals], [e[1] for e in evals]], [e[2] for e in evals], intercept=False)
    steps = {}
    for method in STEP_METHODS:
        linear = [r[f"{method}_pps"] * r["elements"] for r in ok]
        cubic = [r[f"{method}_pps"] * r["problems"] * r["newton_n"] ** 3 for r in ok]
        times = [r[f"{method}_step_s"] for r in ok]
        steps[method] = fit([linear, cubic], times) if method == "reg_lp" and any(cubic) else [*fit([linear], times), 0.0]
    grids = [g for r in ok for g in r["grid"] if "candidate_s" in g]
    grid_o, grid_s = fit([[g["solves"] for g in grids], [g["elements"] for g in grids]],
                         [g["candidate_s"] for g in grids], intercept=False)
    from dmd_torch.runtime import MAX_BATCH_ELEMENTS

    per_element = [r["eval_bytes"] / min(MAX_BATCH_ELEMENTS, r["eval_rows"] * r["elements"]) for r in ok
                   if r["eval_rows"] * r["elements"] >= 100_000]
    return {
        "eval_s": eval_s, "eval_solve_s": eval_o,
        "step_s": {k: v[1] for k, v in steps.items()}, "step_overhead_s": {k: v[0] for k, v in steps.items()},
        "step_cubic_s": {k: v[2] for k, v in steps.items()},
        "grid_s": grid_s, "grid_solve_s": grid_o,
        "bytes_per_element": max(per_element, default=64.0),
        "measured": [[r["n"], r["m"]] for r in ok],
        "max_states": max(r["states"] for r in ok), "max_elements": max(r["elements"] for r in ok),
    }


def largest_within(name: str, budget: float) -> dict[str, str]:
    """Per method, the largest size (most elements) of a wider range whose default run the model
    puts within ``budget`` seconds: within the measured range, and, where larger, past it (the
    estimate's caveat: extrapolated, marked ``*``)."""
    from dmd_torch import make_env
    from dmd_torch.cost import estimate
    from dmd_torch.envs import ENVS
    from dmd_torch.methods import make_method

    sizes = {"seq_sales": [(n, m) for n in range(2, 13) for m in range(2, 7)],
             "scheduling": [(n, t) for n in range(2, 9) for t in range(3, 9)],
             "gridworld": [(n, g) for n in range(2, 9) for g in range(3, 16)],
             "matching": [(n, m) for n in range(2, 6) for m in range(2, 6)],
             "static_auction": [(n, m) for n in range(1, 9) for m in range(1, 8)]}[name]
    best: dict[tuple[str, bool], tuple[float, str]] = {}  # (method, extrapolated) -> (elements, text)
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
            try:
                make_method(method).check_setting(setting)
            except ValueError:  # refused before work
                continue
            est = estimate(setting, make_method(method))
            key = (method, est.caveat is not None)
            size = S * A * (n + 1)
            if est.total_s <= budget and (key not in best or size > best[key][0]):
                best[key] = (size, f"n={n}, size={m} ({est.total_s / 60:.1f} min)")
    out = {}
    for method in ("grid", "zeroth_order", "reg_lp"):
        within, past = best.get((method, False)), best.get((method, True))
        text = [within[1]] if within else []
        if past and (within is None or past[0] > within[0]):
            text.append(f"{past[1]}*")
        out[method] = "; ".join(text) or "none"
    return out


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
    parser.add_argument("--sizes", default="", help="only these sizes, e.g. 7x5,8x5 (n x size)")
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--probe", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=20.0, help="longest exact evaluation run in full")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per size")
    parser.add_argument("--budget", type=float, default=600.0, help="a default run's time budget (s)")
    parser.add_argument("--write-model", action="store_true", help=f"write the constants to {MODEL}")
    parser.add_argument("--device", default="cpu", help="where to measure: cpu (the cost model's), cuda or cuda:N")
    parser.add_argument("--check", type=Path, help="compare the model with the finished runs below this directory")
    args = parser.parse_args()
    if args.check is not None:
        check(args.check)
        return
    try:
        only = {tuple(int(x) for x in z.split("x")) for z in args.sizes.split(",") if z}
    except ValueError:
        parser.error(f"--sizes {args.sizes!r}: allowed: comma-separated n x size pairs, e.g. 7x5,8x5")
    if args.write_model and (args.quick or only):
        parser.error("--write-model fits the constants on every size of a setting; allowed without --quick and --sizes")
    try:
        from dmd_torch.checks import check_device

        device = check_device("--device", args.device)
    except ValueError as exc:
        parser.error(str(exc))
    if args.write_model and device.type != "cpu":
        parser.error("--write-model fits the CPU's constants (what the cost estimates use); allowed with --device cpu")
    names = [s for s in args.settings.split(",") if s]
    unknown = sorted(set(names) - set(SIZES))
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(SIZES)}")
    table = ["| setting | n | size | S | A | elements/profile | exact eval (s) | eval peak (MiB) | reg_lp step (ms) "
             "| zeroth_order step (ms) | grid candidate, default / paper (ms) | step peak (MiB) |", "|" + "---|" * 12]
    models = {}
    print(f"measuring on {args.device}", flush=True)
    for name in names:
        rows = []
        for n, m in (QUICK if args.quick else SIZES)[name]:
            if only and (n, m) not in only:
                continue
            r = run_size(name, n, m, args)
            rows.append(r)
            if "error" in r:
                print(f"{name} n={n} size={m}: {r['error']}", flush=True)
                table.append(f"| {name} | {n} | {m} | — | — | — | {r['error']} | | | | | |")
                continue
            mark = "~" if r["extrapolated"] else ""
            grid_ms = " / ".join(f"{1e3 * g['candidate_s']:.2f}" if "candidate_s" in g else "refused" for g in r["grid"])
            line = (f"| {name} | {n} | {m} | {r['states']} | {r['actions']} | {r['elements']} | {mark}{r['eval_s']:.2f} "
                    f"| {r['eval_bytes'] / 2**20:.0f} | {1e3 * r['reg_lp_step_s']:.1f} | {1e3 * r['zeroth_order_step_s']:.1f} "
                    f"| {grid_ms} | {r['step_bytes'] / 2**20:.0f} |")
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
        print(f"{name}: eval {model['eval_s']:.3g} s/element (+{model['eval_solve_s']:.3g} s per solve), "
              + ", ".join(f"{k} step {v:.3g} s/element (+{model['step_cubic_s'][k]:.3g} s per problem x N^3)"
                          for k, v in model["step_s"].items())
              + f", grid {model['grid_s']:.3g} s/element (+{model['grid_solve_s']:.3g} s per solve), "
              + f"{model['bytes_per_element']:.0f} bytes/element")
    if args.write_model:
        print(f"\nlargest size whose default training run fits in {args.budget / 60:.0f} min (model; *: past the "
              "measured sizes, extrapolated):")
        for name in models:
            print(f"  {name}: " + "; ".join(f"{k}: {v}" for k, v in largest_within(name, args.budget).items()))


if __name__ == "__main__":
    main()
