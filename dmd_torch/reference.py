"""Published and reference figures that ship with the library (``dmd_torch/data``, provenance in
``dmd_torch/data/README.md``): the paper's Tables 1-5 with the known optima of the sales cells, and
independent reference values of VCG's expected objective in every cell. Read with
:mod:`importlib.resources`, so they are there wherever the package is installed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

__all__ = ["PaperRow", "VCGReference", "PAPER_COLUMNS", "paper_tables", "vcg_reference"]

#: The published columns of the paper's tables: VCG and the three methods.
PAPER_COLUMNS: tuple[str, ...] = ("vcg", "grid", "zeroth_order", "reg_lp")


@dataclass(frozen=True)
class PaperRow:
    """One published cell (a row of ``paper_tables.csv``).

    Attributes:
        table: Table number.
        setting: Report key of the setting.
        objective: ``revenue`` or ``makespan``.
        n: Agents.
        m: Items, tasks or grid side.
        values: Published means by column (:data:`PAPER_COLUMNS`).
        text: The same as printed (keeps the paper's digits).
        best_improvement: The published best improvement in percent, or ``None`` ("N/A").
        known_optimum: Revenue of the optimal mechanism (not in the paper), or ``None``.
    """

    table: int
    setting: str
    objective: str
    n: int
    m: int
    values: Mapping[str, float]
    text: Mapping[str, str]
    best_improvement: float | None
    known_optimum: float | None


@dataclass(frozen=True)
class VCGReference:
    """VCG's expected objective in one cell, computed independently of this library.

    Attributes:
        table: Table number.
        setting: Report key of the setting.
        n: Agents.
        m: Items, tasks or grid side.
        value: The reference value.
        stderr: Its standard error (0 where it is exact).
        method: ``exact`` or ``monte_carlo_<profiles>``.
    """

    table: int
    setting: str
    n: int
    m: int
    value: float
    stderr: float
    method: str


def _rows(name: str) -> list[dict[str, str]]:
    text = resources.files("dmd_torch").joinpath("data", name).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _percent(text: str) -> float | None:
    text = text.strip()
    return None if not text or text.upper() == "N/A" else float(text.rstrip("%"))


def paper_tables() -> list[PaperRow]:
    """The published figures of Tables 1-5, in the paper's order."""
    return [
        PaperRow(
            table=int(r["table"]),
            setting=r["setting"],
            objective=r["objective"],
            n=int(r["n"]),
            m=int(r["m"]),
            values={c: float(r[c]) for c in PAPER_COLUMNS},
            text={c: r[c].strip() for c in PAPER_COLUMNS},
            best_improvement=_percent(r["paper_best_improvement"]),
            known_optimum=float(r["known_optimum"]) if r["known_optimum"].strip() else None,
        )
        for r in _rows("paper_tables.csv")
    ]


def vcg_reference() -> list[VCGReference]:
    """The independent VCG reference values of the 32 cells."""
    return [
        VCGReference(int(r["table"]), r["setting"], int(r["n"]), int(r["m"]), float(r["vcg_independent"]),
                     float(r["standard_error"]), r["method"])
        for r in _rows("vcg_reference.csv")
    ]
