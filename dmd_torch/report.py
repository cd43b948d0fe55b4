"""Reproduction report: the paper's Tables 1-5 from a directory of training runs.

A sweep (``python scripts/train.py -m +experiment=table1``, see ``docs/sweeps.md``) leaves one
``results.json`` per run (:mod:`dmd_torch.app`). This module collects them, groups them by the
paper's cells (setting, ``n``, ``m``) and methods, and writes per table

* ``table<k>.md``: the paper's layout -- n, m, VCG, grid, zeroth order, regularized LP, best
  improvement -- where the paper's three columns are our runs of the paper's hyperparameters
  (the variants ``grid_paper``, ``zeroth_order_paper``, ``reg_lp_paper``), then a column per
  further configuration that was run (this library's defaults ``grid``, ``reg_lp``, ..., with no
  published figure), each of our figures as
  ``mean ± standard error`` with the paper's published figure in parentheses, the known optimum and
  optimality ratio for the sales tables, and the wall time of each run;
* ``table<k>.csv``: the same, one column per quantity (empty field = missing);
* ``table<k>.png``: our means (bars with standard errors) against the paper's (black ticks).

The published figures are package data (:mod:`dmd_torch.reference`; citation in
``dmd_torch/data/README.md``).

Sign convention of "best improvement" (the paper's): ``100 * (best - VCG) / |VCG|`` where *best* is
the best of our methods' means in the objective's direction (highest revenue, lowest
makespan). Revenue gains are therefore positive and makespan gains negative, exactly as the paper
prints them (Tables 3 and 4: "-11.65%" is an 11.65% shorter makespan). This differs from the
``improvement_pct`` field of ``results.json``, which is positive-is-better for both objectives; the
report recomputes the figure from the means. Where VCG's mean is 0 the relative figure is
undefined and shown as "N/A" (as in the paper); a cell or method without a run shows "—".

The runs are read as :class:`~dmd_torch.results.RunResult` (the one schema of ``results.json``).
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from dmd_torch.config import VARIANTS
from dmd_torch.cost import format_duration
from dmd_torch.reference import PaperRow, paper_tables
from dmd_torch.results import RESULTS_FILE, RunResult, Training, read_result
from dmd_torch.files import atomic_write

__all__ = [
    "METHODS",
    "PAPER_COLUMN",
    "table_methods",
    "VCG_Z_MAX",
    "MIN_OPTIMALITY_RATIO",
    "METHOD_LABELS",
    "TABLES",
    "TableSpec",
    "Row",
    "collect_results",
    "improvement_pct",
    "best_improvement",
    "build_rows",
    "render_markdown",
    "table_csv",
    "plot_table",
    "write_reports",
]

log = logging.getLogger(__name__)

#: The paper's column (the key of its published figure: the method) of each run label with the
#: paper's hyperparameters (:data:`dmd_torch.config.VARIANTS`).
PAPER_COLUMN: dict[str, str] = {variant: method for variant, (method, _) in VARIANTS.items()}
#: The paper's columns, in the tables' order: those run labels.
METHODS: tuple[str, ...] = tuple(PAPER_COLUMN)
#: This library's defaults (the methods' own names), the columns after the paper's.
DEFAULTS: tuple[str, ...] = tuple(PAPER_COLUMN.values())

#: Column titles of the runs (any other variant is titled by its name).
METHOD_LABELS: dict[str, str] = {
    "grid_paper": "grid",
    "zeroth_order_paper": "zeroth order",
    "reg_lp_paper": "regularized LP",
    "grid": "grid (ours)",
    "zeroth_order": "zeroth order (ours)",
    "reg_lp": "regularized LP (ours)",
}

_SHORT = {"grid_paper": "grid", "zeroth_order_paper": "ZO", "reg_lp_paper": "reg. LP",
          "grid": "grid ours", "zeroth_order": "ZO ours", "reg_lp": "reg. LP ours"}

_ZERO = 1e-9  # |VCG| below this: the relative improvement is undefined ("N/A")
_MISSING = "—"


@dataclass(frozen=True)
class TableSpec:
    """One of the paper's result tables, or the table of a setting outside them (:meth:`for_setting`).

    Attributes:
        number: The table's number in the paper (1-5), or ``None`` for another setting.
        setting: The ``setting`` key of ``results.json`` and of the reference CSV.
        objective: ``revenue`` or ``makespan``.
        maximize: Whether higher is better.
        title: A one-line description.
        m_label: What ``m`` counts in this table.
        paper_runtime_hours: The runtime bounds of the paper's caption, per method (hours).
        paper_stderr_bound: The standard-error bound of the paper's caption (``None``: no paper table).
    """

    number: int | None
    setting: str
    objective: str
    maximize: bool
    title: str
    m_label: str
    paper_runtime_hours: Mapping[str, float]
    paper_stderr_bound: float | None

    @classmethod
    def for_setting(cls, run: RunResult) -> TableSpec:
        """The table of the setting of ``run``, one outside the paper's tables (no published figures)."""
        return cls(None, run.setting, run.objective, run.maximize, f"{run.setting}", "size", {}, None)

    @property
    def sign(self) -> float:
        """``+1`` if higher is better, ``-1`` if lower is."""
        return 1.0 if self.maximize else -1.0

    @property
    def better(self) -> str:
        """``"higher"`` or ``"lower"``."""
        return "higher" if self.sign > 0 else "lower"

    @property
    def name(self) -> str:
        """The stem of its files: ``table<k>``, or the setting's report key."""
        return self.setting if self.number is None else f"table{self.number}"

    @property
    def heading(self) -> str:
        return f"Results on {self.title}" if self.number is None else f"Table {self.number}: {self.title}"


#: The paper's five tables (captions of Tables 1-5; Table 5's caption says "makespan" but the
#: gridworld objective, and its figures, are revenue).
TABLES: dict[int, TableSpec] = {
    1: TableSpec(1, "seq_sales_sym", "revenue", True, "Sequential sales, symmetric values v_i ~ U[0, 1]",
                 "items", {"grid": 31.0, "zeroth_order": 0.2, "reg_lp": 1.1}, 0.007),
    2: TableSpec(2, "seq_sales_asym", "revenue", True, "Sequential sales, asymmetric values v_i ~ U[0, 1/i], weights optimized",
                 "items", {"grid": 32.0, "zeroth_order": 0.2, "reg_lp": 1.1}, 0.004),
    3: TableSpec(3, "scheduling_sym", "makespan", False, "Dynamic task scheduling, costs U[0, 3]",
                 "tasks", {"grid": 16.0, "zeroth_order": 0.1, "reg_lp": 4.1}, 0.02),
    4: TableSpec(4, "scheduling_asym", "makespan", False, "Dynamic task scheduling, costs i * U[0, 3], weights optimized",
                 "tasks", {"grid": 17.0, "zeroth_order": 0.1, "reg_lp": 4.0}, 0.03),
    5: TableSpec(5, "gridworld", "revenue", True, "Gridworld on a g x g torus, one goal cell per agent",
                 "grid side", {"grid": 30.0, "zeroth_order": 0.1, "reg_lp": 0.1}, 0.05),
}
_BY_SETTING = {spec.setting: spec for spec in TABLES.values()}


@dataclass
class Row:
    """One row of a reproduced table.

    Attributes:
        n: Agents.
        m: Items, tasks or grid side.
        runs: Our run per method label (absent: missing).
        paper: The published cell, or ``None`` for a cell the paper does not have.
        vcg_mean: Our VCG mean (from the first run in :data:`METHODS` order), or ``None``.
        vcg_stderr: Its standard error, or ``None``.
        vcg_consistent: Whether all runs of the cell report the same VCG mean (same profiles).
        best_method: Our best method by mean, or ``None`` without runs.
        best_improvement: Its improvement over VCG in percent (paper's sign), or ``None``.
        known_optimum: The known optimum on our profiles (sales tables), or ``None``.
        known_optimum_stderr: Its standard error, or ``None``.
        optimality_ratio: Best mean over the known optimum, or ``None``.
        vcg_z: ``(our VCG - published VCG) / sqrt(our SE^2 + caption bound^2)``, or ``None``.
        paper_best: The best of the paper's three published method figures, or ``None``.
        best_gap: Our best minus the paper's best, signed so that ``>= 0`` means at least as good.
    """

    n: int
    m: int
    runs: dict[str, RunResult] = field(default_factory=dict)
    paper: PaperRow | None = None
    vcg_mean: float | None = None
    vcg_stderr: float | None = None
    vcg_consistent: bool = True
    best_method: str | None = None
    best_improvement: float | None = None
    known_optimum: float | None = None
    known_optimum_stderr: float | None = None
    optimality_ratio: float | None = None
    vcg_z: float | None = None
    paper_best: float | None = None
    best_gap: float | None = None


#: Reproduction targets: VCG within this many combined standard errors
#: of the published figure, and in the sales tables at least this fraction of the known optimum.
VCG_Z_MAX = 3.0
MIN_OPTIMALITY_RATIO = 0.99


# ---------------------------------------------------------------------------------------- results


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def collect_results(root: str | os.PathLike) -> list[RunResult]:
    """Every usable ``results.json`` below ``root``, sorted by setting, cell and method.

    Unreadable or incomplete files are skipped with a logged warning. When several runs share a
    setting, cell and method (e.g. a rerun into another directory), the most recently written one
    is kept and the others are reported in a warning.

    Args:
        root: The directory to search (recursively), e.g. ``outputs/table1``.

    Raises:
        FileNotFoundError: If ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such directory: {root}")
    chosen: dict[tuple[str, int, int, str], tuple[float, RunResult]] = {}
    for path in sorted(root.rglob(RESULTS_FILE)):
        try:
            record = read_result(path)
            mtime = path.stat().st_mtime
        except (OSError, ValueError) as err:
            log.warning("skipping %s", err)
            continue
        if record.training is None:
            continue
        key = (record.setting, record.n_agents, record.size, record.label)
        if key in chosen:
            old_mtime, old = chosen[key]
            keep, drop = (record, old) if mtime >= old_mtime else (old, record)
            log.warning("two runs of %s n=%d m=%d %s: using %s, ignoring %s", *key, keep.source, drop.source)
            chosen[key] = (max(mtime, old_mtime), keep)
        else:
            chosen[key] = (mtime, record)
    return [rec for _, (_, rec) in sorted(chosen.items(), key=lambda kv: kv[0])]


# ----------------------------------------------------------------------------------- paper tables


# ------------------------------------------------------------------------------------ computation


def improvement_pct(value: float, vcg: float) -> float | None:
    """``100 * (value - vcg) / |vcg|``: the paper's signed relative change over VCG.

    Positive means a higher objective than VCG (better revenue, *worse* makespan); the paper prints
    makespan gains as negative figures. ``None`` when ``|vcg|`` is 0 (the paper's "N/A").
    """
    if abs(vcg) < _ZERO:
        return None
    return 100.0 * (value - vcg) / abs(vcg)


def best_improvement(runs: Mapping[str, RunResult], sign: float) -> tuple[str | None, float | None]:
    """Our best method of a cell and its improvement over VCG (paper's sign convention).

    Args:
        runs: The cell's runs by method label (the paper's :data:`METHODS` and any variants).
        sign: ``+1`` for revenue (best = highest mean), ``-1`` for makespan (lowest).

    Returns:
        ``(method, percent)``; ``(None, None)`` without runs; the percent is ``None`` when VCG is 0.
        Each run is compared with the VCG evaluated on its own profiles.
    """
    if not runs:
        return None, None
    method = max(runs, key=lambda k: sign * runs[k].evaluation.mean)
    ev = runs[method].evaluation
    return method, improvement_pct(ev.mean, ev.vcg_mean)


def build_rows(
    spec: TableSpec, records: Iterable[RunResult], paper: Sequence[PaperRow] | None = None
) -> list[Row]:
    """The rows of one table: the paper's cells in the paper's order, then any extra cells we ran.

    Args:
        spec: The table.
        records: Runs (any settings; those of other settings are ignored).
        paper: The published rows; default :func:`dmd_torch.reference.paper_tables`.
    """
    paper = paper_tables() if paper is None else paper
    rows: dict[tuple[int, int], Row] = {}
    for p in paper:
        if p.table == spec.number:
            rows[(p.n, p.m)] = Row(n=p.n, m=p.m, paper=p)
    extra: dict[tuple[int, int], Row] = {}
    for rec in records:
        if rec.setting != spec.setting:
            continue
        key = (rec.n_agents, rec.size)
        row = rows.get(key) or extra.setdefault(key, Row(n=rec.n_agents, m=rec.size))
        if rec.label in row.runs:
            raise ValueError(f"two runs of {rec.label} for {spec.name} n={rec.n_agents} m={rec.size}: "
                             f"{row.runs[rec.label].source} and {rec.source}")
        row.runs[rec.label] = rec
    ordered = list(rows.values()) + [extra[k] for k in sorted(extra, key=lambda k: (k[1], k[0]))]
    for row in ordered:
        runs = [row.runs[k] for k in METHODS if k in row.runs] + [
            r for k, r in row.runs.items() if k not in METHODS
        ]
        if not runs:
            continue
        first = runs[0].evaluation
        row.vcg_mean, row.vcg_stderr = first.vcg_mean, first.vcg_stderr
        row.vcg_consistent = all(abs(r.evaluation.vcg_mean - first.vcg_mean) <= 1e-9 for r in runs)
        row.best_method, row.best_improvement = best_improvement(row.runs, spec.sign)
        p = row.paper
        if p is not None and spec.paper_stderr_bound is not None:
            combined = math.hypot(row.vcg_stderr, spec.paper_stderr_bound)
            row.vcg_z = (row.vcg_mean - p.values["vcg"]) / combined
            row.paper_best = spec.sign * max(spec.sign * p.values[PAPER_COLUMN[k]] for k in METHODS)
            if row.best_method is not None:
                row.best_gap = spec.sign * (row.runs[row.best_method].evaluation.mean - row.paper_best)
        if row.best_method is not None:
            best = row.runs[row.best_method].evaluation
            row.known_optimum, row.known_optimum_stderr = best.known_optimum, best.known_optimum_stderr
            if best.known_optimum is not None and abs(best.known_optimum) > _ZERO:
                row.optimality_ratio = best.mean / best.known_optimum
    return ordered


# -------------------------------------------------------------------------------------- rendering


def _has_optimum(rows: Sequence[Row]) -> bool:
    """Whether the table has a known optimum: ours evaluated, or a reference value."""
    return any(r.known_optimum is not None or (r.paper is not None and r.paper.known_optimum is not None) for r in rows)


def _training(run: RunResult) -> Training:
    assert run.training is not None  # collect_results keeps training runs only
    return run.training


def table_methods(rows: Sequence[Row]) -> tuple[str, ...]:
    """The method columns of a table: the paper's :data:`METHODS` (in a table of the paper, run or
    not; elsewhere those run), then this library's :data:`DEFAULTS` that were run, then the other
    variants run, sorted."""
    ran = {k for row in rows for k in row.runs}
    published = any(row.paper is not None for row in rows)  # a paper table shows its three columns always
    paper = tuple(k for k in METHODS if published or k in ran)
    ours = tuple(k for k in DEFAULTS if k in ran)
    return (*paper, *ours, *sorted(ran - set(METHODS) - set(ours)))


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _short(method: str) -> str:
    return _SHORT.get(method, method)


def _fmt(x: float | None, digits: int = 4) -> str:
    return _MISSING if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "N/A" if x is None else f"{x:.2f}%"


def _duration(seconds: float | None) -> str:
    return _MISSING if seconds is None else format_duration(seconds)


def _paper_text(row: Row, column: str) -> str:
    """The published figure of column ``column`` (``vcg`` or a run label of :data:`METHODS`), or "—"."""
    key = PAPER_COLUMN.get(column, column if column == "vcg" else None)
    return row.paper.text[key] if row.paper is not None and key in row.paper.text else _MISSING


def _ours(mean: float | None, stderr: float | None, bold: bool = False) -> str:
    if mean is None:
        return _MISSING
    value = f"**{mean:.4f}**" if bold else f"{mean:.4f}"
    return f"{value} ± {_fmt(stderr)}"


def render_markdown(spec: TableSpec, rows: Sequence[Row]) -> str:
    """Table ``spec`` as Markdown, in the paper's layout, ours beside the paper's figures.

    Every figure cell reads ``ours ± standard error (paper)``; our best method of each row is in
    bold. Missing runs show "—"; an undefined relative improvement (VCG revenue 0) shows "N/A".
    """
    better = spec.better
    methods = table_methods(rows)
    head = ["n", "m", "VCG", *(_label(k) for k in methods), "best improvement"]
    if _has_optimum(rows):
        head += ["known optimum", "optimality ratio"]
    head.append("wall time (" + " / ".join(_short(k) for k in methods) + ")")
    lines = [
        f"# {spec.heading}",
        "",
        f"Objective: {spec.objective} ({better} is better); m = {spec.m_label}. "
        "Each cell: ours ± standard error (paper's published figure); our best method in bold.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---:" for _ in head) + "|",
    ]
    inconsistent = unsound = False
    for row in rows:
        vcg = _ours(row.vcg_mean, row.vcg_stderr)
        if not row.vcg_consistent:
            vcg += "*"
            inconsistent = True
        cells = [str(row.n), str(row.m), f"{vcg} ({_paper_text(row, 'vcg')})"]
        for k in methods:
            rec = row.runs.get(k)
            ours = _ours(rec.evaluation.mean, rec.evaluation.stderr, bold=k == row.best_method) if rec else _MISSING
            if rec and not rec.evaluation.numerically_sound:
                ours += " ⚠"
                unsound = True
            cells.append(f"{ours} ({_paper_text(row, k)})")
        if row.best_method is None:
            ours_imp = _MISSING
        else:
            ours_imp = f"{_pct(row.best_improvement)} [{_short(row.best_method)}]"
        paper_imp = _MISSING if row.paper is None else _pct(row.paper.best_improvement)
        cells.append(f"{ours_imp} ({paper_imp})")
        if _has_optimum(rows):
            ref = row.paper.known_optimum if row.paper is not None else None
            opt = _ours(row.known_optimum, row.known_optimum_stderr) if row.known_optimum is not None else _MISSING
            cells.append(f"{opt} ({_fmt(ref, 5)})")
            cells.append(_fmt(row.optimality_ratio, 3))
        cells.append(" / ".join(_duration(_training(row.runs[k]).runtime_seconds) if k in row.runs else _MISSING
                                for k in methods))
        lines.append("| " + " | ".join(cells) + " |")
    records = [r for row in rows for r in row.runs.values()]
    profiles = sorted({r.evaluation.profiles for r in records})
    seeds = sorted({_training(r).seed for r in records})
    budgets = sorted({_training(r).grid_candidates for r in records if _training(r).method == "grid"})
    total = sum(_training(r).runtime_seconds for r in records)
    paper_hours = ", ".join(f"{METHOD_LABELS[k + '_paper']} < {spec.paper_runtime_hours[k]:g} h" for k in spec.paper_runtime_hours)
    imp_sign = f"positive = a higher {spec.objective} than VCG, negative = a lower one, as the paper prints it"
    variants = [k for k in methods if k not in METHODS]
    notes = [
        "",
        f"* Best improvement: 100 · (best − VCG) / |VCG| with best = the {better} mean of our methods "
        f"({imp_sign}); our best method in brackets. N/A: VCG's mean is 0. —: no run.",
        f"* Ours: {len(records)} run(s); evaluation on {', '.join(map(str, profiles)) or '?'} fresh profiles "
        f"per run (paper: 10000); training seed(s) {', '.join(map(str, seeds)) or '—'}; "
        f"total wall time {_duration(total) if records else _MISSING}"
        + (f"; grid: {', '.join(map(str, budgets))} Sobol points per run (paper: 10000)." if budgets else "."),
    ]
    if spec.number is not None:
        notes.append(f"* Paper (caption of Table {spec.number}): standard errors < {spec.paper_stderr_bound:g}; "
                     f"runtime {paper_hours}.")
    paper_runs = [k for k in methods if k in METHODS and any(k in row.runs for row in rows)]  # run, not only shown
    if variants:
        ours_text = (f"{', '.join(_label(k) for k in variants)}: this library's configurations "
                     "(method=<name>: the defaults), not in the paper (no published figure)")
        if paper_runs:
            notes.append(
                f"* {', '.join(_label(k) for k in paper_runs)}: our runs of the paper's section-5 hyperparameters "
                f"(method=<name>_paper); {ours_text}; all counted in our best."
            )
        else:
            notes.append(f"* {ours_text}.")
    if _has_optimum(rows):
        notes.append(
            "* Known optimum: the objective of the setting's known optimal mechanism on our evaluation profiles "
            "(reference value in parentheses, not from the paper); optimality ratio = our best mean / known optimum."
        )
    if inconsistent:
        notes.append("* \\*: the runs of this cell evaluated VCG on different profiles; shown: the first method's.")
    if unsound:
        notes.append("* ⚠: the mechanism's boosts or weights dwarf the rewards; float64 keeps it strategyproof only up "
                     "to its `ic_tolerance` in results.json (docs/numerical_soundness.md).")
    notes += _check_notes(spec, rows)
    if spec.number is not None:
        notes.append(
            "* Source of the published figures: Curry, Thoma, Chakrabarti, McAleer, Kroer, Sandholm, He & Seuken, "
            "*Automated Design of Affine Maximizer Mechanisms in Dynamic Settings*, AAAI-24 (see dmd_torch/data/README.md)."
        )
    return "\n".join(lines + notes) + "\n"


def _check_notes(spec: TableSpec, rows: Sequence[Row]) -> list[str]:
    """The reproduction targets, cell by cell: which pass, and by how much the others fall short."""
    def cell(row: Row) -> str:
        return f"n={row.n} m={row.m}"

    def line(title: str, done: Sequence[Any], failed: list[tuple[Row, str]]) -> str:
        text = f"* Check, {title}: {len(done) - len(failed)}/{len(done)} cells"
        if failed:
            text += "; short: " + "; ".join(f"{cell(r)} ({why})" for r, why in failed)
        return text + "."

    vcg = [r for r in rows if r.vcg_z is not None]
    best = [r for r in rows if r.best_gap is not None]
    notes = [] if spec.number is None else [
        line(f"our VCG within {VCG_Z_MAX:g} combined standard errors of the published one (ours and the "
             f"caption's bound {spec.paper_stderr_bound:g})", vcg,
             [(r, f"{r.vcg_z:+.1f} SE") for r in vcg if abs(r.vcg_z) > VCG_Z_MAX]),
        line("our best at least as good as the paper's best method", best,
             [(r, f"{r.runs[r.best_method].evaluation.mean:.4f} vs {r.paper_best:.4f}") for r in best if r.best_gap < 0]),
    ]
    for k in DEFAULTS:  # this library's defaults against VCG, on the evaluation's fresh profiles
        cells = [r for r in rows if k in r.runs]
        if cells:
            worse = [(r, f"{r.runs[k].evaluation.mean:.4f} vs {r.runs[k].evaluation.vcg_mean:.4f}") for r in cells
                     if not spec.sign * (r.runs[k].evaluation.mean - r.runs[k].evaluation.vcg_mean) > 0]
            notes.append(line(f"{_label(k)} better than VCG", cells, worse))
    if _has_optimum(rows):
        opt = [r for r in rows if r.optimality_ratio is not None]
        notes.append(line(f"optimality ratio >= {MIN_OPTIMALITY_RATIO:g}", opt,
                          [(r, f"{r.optimality_ratio:.3f}") for r in opt if r.optimality_ratio < MIN_OPTIMALITY_RATIO]))
    ran = {k for r in rows for k in r.runs}
    if ran - set(METHODS) and ran & set(METHODS):  # the same checks with the paper's hyperparameters only
        paper_only = []
        for r in rows:
            runs = {k: r.runs[k] for k in METHODS if k in r.runs}
            if runs:
                paper_only.append((r, runs[best_improvement(runs, spec.sign)[0]].evaluation.mean))
        gap = [(r, b) for r, b in paper_only if r.paper_best is not None]
        notes.append(line("with the paper's hyperparameters only, our best at least as good as the paper's best", gap,
                          [(r, f"{b:.4f} vs {r.paper_best:.4f}") for r, b in gap
                           if spec.sign * (b - r.paper_best) < 0]))
        if _has_optimum(rows):
            ratio = [(r, b / r.known_optimum) for r, b in paper_only if r.known_optimum]
            notes.append(line(f"with the paper's hyperparameters only, optimality ratio >= {MIN_OPTIMALITY_RATIO:g}",
                              ratio, [(r, f"{x:.3f}") for r, x in ratio if x < MIN_OPTIMALITY_RATIO]))
    if _has_optimum(rows):  # what this library's defaults reach on their own
        for k in DEFAULTS:
            ratio = [(r, r.runs[k].evaluation.mean / r.known_optimum) for r in rows if k in r.runs and r.known_optimum]
            if ratio:
                notes.append(line(f"{_label(k)} alone, optimality ratio >= {MIN_OPTIMALITY_RATIO:g}", ratio,
                                  [(r, f"{x:.3f}") for r, x in ratio if x < MIN_OPTIMALITY_RATIO]))
    return notes


def _num(x: float | int | None) -> str:
    return "" if x is None else repr(x) if isinstance(x, float) else str(x)


def table_csv(spec: TableSpec, rows: Sequence[Row]) -> str:
    """Table ``spec`` as CSV text: one row per cell, one column per quantity.

    Columns: ``table, setting, objective, n, m``, ``vcg, vcg_stderr, vcg_published``; per run label
    ``<label>, <label>_stderr, <label>_published, <label>_improvement_pct, <method>_optimality_ratio,
    <label>_runtime_seconds, <label>_steps, <label>_seed, <label>_run_dir`` (``_published``: the
    paper's figure of the column, for :data:`METHODS`); then ``best_method,
    best_improvement_pct, best_improvement_pct_published, known_optimum, known_optimum_stderr,
    known_optimum_reference, optimality_ratio, vcg_z, paper_best, best_gap`` (see :class:`Row`). Improvements use the paper's sign convention (see
    the module docstring). Missing values are empty fields.
    """
    methods = table_methods(rows)
    header = ["table", "setting", "objective", "n", "m", "vcg", "vcg_stderr", "vcg_published"]
    for k in methods:
        header += [k, f"{k}_stderr", f"{k}_published", f"{k}_improvement_pct", f"{k}_optimality_ratio",
                   f"{k}_runtime_seconds", f"{k}_steps", f"{k}_seed", f"{k}_run_dir"]
    header += ["best_method", "best_improvement_pct", "best_improvement_pct_published", "known_optimum",
               "known_optimum_stderr", "known_optimum_reference", "optimality_ratio", "vcg_z", "paper_best",
               "best_gap"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        p = row.paper
        line = [str(spec.number or ""), spec.setting, spec.objective, str(row.n), str(row.m),
                _num(row.vcg_mean), _num(row.vcg_stderr), p.text["vcg"] if p else ""]
        for k in methods:
            rec = row.runs.get(k)
            paper = p.text.get(PAPER_COLUMN.get(k, ""), "") if p else ""
            if rec is None:
                line += ["", "", paper, "", "", "", "", "", ""]
                continue
            ev, tr = rec.evaluation, _training(rec)
            line += [_num(ev.mean), _num(ev.stderr), paper,
                     _num(improvement_pct(ev.mean, ev.vcg_mean)), _num(ev.optimality_ratio),
                     _num(tr.runtime_seconds), _num(tr.steps), _num(tr.seed),
                     str(rec.source.parent) if rec.source is not None else ""]
        line += [row.best_method or "", _num(row.best_improvement), _num(p.best_improvement) if p else "",
                 _num(row.known_optimum), _num(row.known_optimum_stderr),
                 _num(p.known_optimum) if p else "", _num(row.optimality_ratio), _num(row.vcg_z),
                 _num(row.paper_best), _num(row.best_gap)]
        writer.writerow(line)
    return buf.getvalue()


_COLORS = {"vcg": "0.6", "grid_paper": "tab:purple", "zeroth_order_paper": "tab:blue", "reg_lp_paper": "tab:orange",
           "grid": "tab:pink", "zeroth_order": "tab:cyan", "reg_lp": "tab:green"}
_MORE_COLORS = ("tab:brown", "tab:olive", "tab:red", "tab:gray")


def plot_table(spec: TableSpec, rows: Sequence[Row], path: str | os.PathLike) -> Path:
    """Writes a PNG of table ``spec``: per cell, our means of VCG and each method as bars
    (with standard errors), the paper's published figures as black ticks, and the known optimum
    (sales tables) as a red dotted line. The file is written whole (write then rename).

    Returns:
        The written path.
    """
    series = ("vcg", *table_methods(rows))
    colors = dict(_COLORS)
    colors.update(zip([k for k in series if k not in colors], itertools.cycle(_MORE_COLORS)))
    width = 0.8 / len(series)
    fig = Figure(figsize=(max(6.0, 1.3 * len(rows) + 2.0), 4.6))
    ax = fig.subplots()
    for i, row in enumerate(rows):
        for j, col in enumerate(series):
            x = i - 0.4 + width * (j + 0.5)
            if col == "vcg":
                mean, se = row.vcg_mean, row.vcg_stderr
            else:
                rec = row.runs.get(col)
                mean, se = (rec.evaluation.mean, rec.evaluation.stderr) if rec else (None, None)
            if mean is not None:
                ax.bar(x, mean, width * 0.92, yerr=se, color=colors[col], capsize=2, ecolor="k")
            key = PAPER_COLUMN.get(col, col if col == "vcg" else None)
            if row.paper is not None and key in row.paper.values:
                ax.plot([x - width / 2, x + width / 2], [row.paper.values[key]] * 2, color="k", lw=2)
        if not row.runs:
            ax.annotate("no run", (i, 0), xytext=(0, 3), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7, color="0.4")
        ref = row.known_optimum if row.known_optimum is not None else (row.paper.known_optimum if row.paper else None)
        if _has_optimum(rows) and ref is not None:
            ax.plot([i - 0.45, i + 0.45], [ref, ref], color="tab:red", ls=":", lw=1.5)
    ax.set_xticks(range(len(rows)), [f"n={r.n}\nm={r.m}" for r in rows])
    ax.set_xlim(-0.6, len(rows) - 0.4)
    better = spec.better
    ax.set_ylabel(f"{spec.objective} ({better} is better)")
    ax.set_title(spec.heading, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=colors[c], label="VCG" if c == "vcg" else _label(c)) for c in series]
    handles.append(Line2D([], [], color="k", lw=2, label="paper"))
    if _has_optimum(rows):
        handles.append(Line2D([], [], color="tab:red", ls=":", lw=1.5, label="known optimum"))
    ax.legend(handles=handles, fontsize=8, ncol=len(handles), loc="upper center",
              bbox_to_anchor=(0.5, -0.16), frameon=False)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def write_reports(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    tables: Iterable[int] | None = None,
) -> dict[str, list[Path]]:
    """Collects the runs below ``root`` and writes a table per setting into ``out``: ``table<k>.md``,
    ``.csv`` and ``.png`` for the paper's tables, ``<report key>.md`` (and ``.csv``, ``.png``) for a
    setting outside them (a user's, with its known optimum where it has one).

    Args:
        root: The directory holding the runs (searched recursively for ``results.json``).
        out: Output directory; default ``root``.
        tables: The paper's tables to write (even without runs); default every setting with a run.

    Returns:
        The written files by table name (``table1``, ..., or a report key).

    Raises:
        FileNotFoundError: If ``root`` is not a directory.
        ValueError: On an unknown table number.
    """
    records = collect_results(root)
    out = Path(root if out is None else out)
    if tables is None:
        specs = [TABLES[k] for k in sorted({_BY_SETTING[r.setting].number for r in records if r.setting in _BY_SETTING})]
        others = {r.setting: r for r in records if r.setting not in _BY_SETTING}
        specs += [TableSpec.for_setting(others[k]) for k in sorted(others)]
    else:
        wanted = sorted(set(tables))
        unknown = [t for t in wanted if t not in TABLES]
        if unknown:
            raise ValueError(f"unknown table(s) {unknown}; allowed: {', '.join(map(str, TABLES))}")
        specs = [TABLES[k] for k in wanted]
    paper = paper_tables()
    written: dict[str, list[Path]] = {}
    for spec in specs:
        rows = build_rows(spec, records, paper)
        md, csv_path = out / f"{spec.name}.md", out / f"{spec.name}.csv"
        with atomic_write(md) as tmp:
            tmp.write_text(render_markdown(spec, rows), encoding="utf-8")
        with atomic_write(csv_path) as tmp:
            tmp.write_text(table_csv(spec, rows), encoding="utf-8")
        png = plot_table(spec, rows, out / f"{spec.name}.png")
        written[spec.name] = [md, csv_path, png]
    return written
