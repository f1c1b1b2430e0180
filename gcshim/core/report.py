"""What gcshim did to a model, as rows and as a printable table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from .table import format_table


@dataclass(frozen=True)
class LayerReport:
    path: str
    layer: str
    # "checkpointed"; or why not: "skipped: <reason>" (at apply, or at the layer's last call:
    # eval mode, grad disabled, ...), "handed to transformers' own checkpointing"
    status: str
    adapter: str = ""
    mode: str = ""
    note: str = ""  # why the mode differs from the one asked, what the recompute replays


@dataclass(frozen=True)
class Report:
    model: str
    rows: List[LayerReport]
    source: str = ""

    @property
    def checkpointed(self) -> List[str]:
        return [row.path for row in self.rows if row.status == "checkpointed"]

    def __str__(self) -> str:
        if not self.rows:
            return f"gcshim: nothing applied to {self.model}"
        header: Tuple[str, ...] = ("layer path", "class", "status", "adapter", "mode")
        rows = [(row.path, row.layer, row.status, row.adapter, row.mode) for row in self.rows]
        if any(row.note for row in self.rows):
            header = (*header, "note")
            rows = [line + (row.note,) for line, row in zip(rows, self.rows)]
        title = (f"gcshim: {len(self.checkpointed)} of {len(self.rows)} layers of {self.model} "
                 f"checkpointed" + (f" (found by {self.source})" if self.source else ""))
        return "\n".join([title, *format_table(header, rows)])
