"""The one plain-text table gcshim prints (the report, `inspect`, the demo)."""

from __future__ import annotations

from typing import List, Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                 separator: str = "  ") -> List[str]:
    """Left-aligned columns under a header and a rule of dashes; trailing spaces cut. The rule
    joins its dashes with `separator`, its spaces turned to dashes ("  " or "-|-")."""
    table = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    rule = separator.replace(" ", "-")
    lines = [separator.join(cell.ljust(w) for cell, w in zip(table[0], widths)).rstrip(),
             rule.join("-" * w for w in widths)]
    lines += [separator.join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
              for line in table[1:]]
    return lines
