"""CSV cells a spreadsheet will not run: every CSV the project writes goes through ``cell``.

People open ``to_label/*.csv`` (and sweep summaries) in Excel or LibreOffice, which evaluate a cell that starts
with ``=``, ``+``, ``-`` or ``@`` as a formula, and treat a leading tab or carriage return the same way (OWASP's
"CSV injection"). An id such as ``=cmd|' /C calc'!A17`` would run a program on an annotator's machine. ``cell``
puts a single quote in front of such a value, which spreadsheets show as text; ``uncell`` takes exactly that
quote off again, so an id read back from a file people edited is the id that was written.

A plain decimal number (``-3``, ``+1.5``, ``-2e-3``) is left as it is: a spreadsheet reads it as that number and
runs nothing, and negative integer ids and negative metrics stay numbers people can sort. Anything else with a
leading sign (``+1+10``, ``-2+3``) is quoted.

The quote must be undone exactly, even for a value that truly starts with a quote: a value is quoted when it
is dangerous *or* when it starts with a quote and the rest would be quoted, so ``cell`` never produces a text
``uncell`` would misread (``'=x`` is written ``''=x``; ``'abc`` is written as it is).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from pathlib import Path

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _needs_quote(text: str) -> bool:
    if text.startswith("'"):
        return _needs_quote(text[1:])
    return text.startswith(FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text)


def cell(value: object) -> str:
    """``value`` as the text of one CSV cell that no spreadsheet evaluates (None: an empty cell)."""
    text = "" if value is None else str(value)
    return "'" + text if _needs_quote(text) else text


def uncell(text: str) -> str:
    """The value ``cell`` wrote as ``text`` (a cell ``cell`` did not quote comes back unchanged)."""
    return text[1:] if text.startswith("'") and _needs_quote(text[1:]) else text


def write_csv(path: str | Path, header: Iterable[object], rows: Iterable[Iterable[object]]) -> None:
    """A CSV file of ``header`` and ``rows``, every cell through ``cell``."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([cell(v) for v in header])
        w.writerows([cell(v) for v in row] for row in rows)
