"""Tables from a sweep: ``python scripts/make_tables.py outputs/<experiment> [--out DIR] [--table K ...]``.

Collects every ``results.json`` below the directory and writes ``table<k>.md``, ``.csv`` and ``.png``
(ours beside the paper's published figures) for every paper table with runs, and ``<setting>.md``
(``.csv``, ``.png``) for every other setting with runs; see :mod:`dmd_torch.report` and ``docs/sweeps.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dmd_torch.report import TABLES, write_reports


def main(argv: list[str] | None = None) -> int:
    """Parses the arguments, writes the tables and prints the written paths; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="directory holding the runs, e.g. outputs/table1")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: the runs' directory)")
    parser.add_argument("--table", type=int, action="append", choices=sorted(TABLES), dest="tables",
                        help="write this table even without runs (repeatable; default: every table with runs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        written = write_reports(args.directory, args.out, args.tables)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not written:
        print(f"error: no results.json of a training run below {args.directory}", file=sys.stderr)
        return 1
    for name, paths in written.items():
        print(f"{name}: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
