"""What a mechanism does, shown: ``mechanism.md`` and ``mechanism.png`` beside ``mechanism.json``.

Each setting describes an AMA in its own terms (:meth:`~dmd_torch.envs.Setting.describe`): the
effective reserve prices of the sales, the assignments of the scheduling, the boosts on the grid,
the menu of a static auction, when and whom the matching matches. A description is a short
Markdown text and one figure; :func:`write_description` writes both (whole).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from dmd_torch.files import atomic_write, write_text

if TYPE_CHECKING:
    from dmd_torch.mechanism import AMA

__all__ = ["Description", "markdown_table", "boost_heatmap", "write_description", "DESCRIPTION_FILES"]

#: The files of a description.
DESCRIPTION_FILES = ("mechanism.md", "mechanism.png")


@dataclass
class Description:
    """A mechanism in its setting's own terms.

    Attributes:
        title: One line naming the mechanism and the setting.
        sections: Markdown blocks, e.g. a paragraph and a table.
        figure: One picture, or ``None``.
    """

    title: str
    sections: list[str] = field(default_factory=list)
    figure: Figure | None = None

    def markdown(self) -> str:
        """The Markdown text of ``mechanism.md``."""
        return "\n\n".join([f"# {self.title}", *self.sections]) + "\n"


def _cell(x: Any) -> str:
    if isinstance(x, float):
        return f"{x + 0.0:.4f}"
    return str(x)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats to 4 decimals."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def boost_heatmap(ama: AMA, title: str = "boosts b(s, a)") -> Figure:
    """A heatmap of the boosts, states by actions (every setting's default picture)."""
    b = ama.boosts.detach().cpu().numpy()
    fig = Figure(figsize=(min(12.0, 2.0 + 0.6 * b.shape[1]), min(10.0, 1.5 + 0.25 * b.shape[0])))
    ax = fig.subplots()
    image = ax.imshow(b, aspect="auto", cmap="coolwarm", vmin=-abs(b).max() or -1, vmax=abs(b).max() or 1)
    ax.set_xlabel("action")
    ax.set_ylabel("state")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def write_description(ama: AMA, directory: str | os.PathLike) -> tuple[Path, Path | None]:
    """Writes ``mechanism.md`` and ``mechanism.png`` (where the description has a figure) into ``directory``."""
    directory = Path(directory)
    description = ama.setting.describe(ama)
    md = directory / DESCRIPTION_FILES[0]
    png = None
    if description.figure is not None:
        png = directory / DESCRIPTION_FILES[1]
        buf = io.BytesIO()
        description.figure.savefig(buf, format="png", dpi=100)
        with atomic_write(png) as tmp:
            tmp.write_bytes(buf.getvalue())
    write_text(md, description.markdown() + ("\n![mechanism](mechanism.png)\n" if png else ""))
    return md, png
