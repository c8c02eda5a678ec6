"""Showing names that come from visitors (upload names, config fields, folder names, URL values) as text.

Two rules, held by construction:
- A visitor's string never goes into HTML: the only HTML the pages write is :func:`swatch`, built from a
  ``#rrggbb`` colour and nothing else.
- Where a visitor's string goes into Markdown (titles, messages), it goes through :func:`md`, which escapes
  every ASCII punctuation character (CommonMark shows a backslash-escaped punctuation character as itself),
  so no link, image, emphasis, directive or math can form from it.
"""

from __future__ import annotations

import re
import string

_PUNCT = re.compile("([" + re.escape(string.punctuation) + "])")
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


def md(text: object) -> str:
    """``text`` as literal Markdown: every ASCII punctuation character backslash-escaped, line breaks and
    tabs made spaces (a name is one line)."""
    one_line = " ".join(str(text).split("\n")).replace("\r", " ").replace("\t", " ")
    return _PUNCT.sub(r"\\\1", one_line)


def swatch(color: str) -> str:
    """HTML of a small square in ``color`` (``#rrggbb`` only; anything else is a ValueError)."""
    if not isinstance(color, str) or not _HEX.match(color):
        raise ValueError(f"not a #rrggbb colour: {color!r}")
    return f"<span style='color:{color}'>■</span>"


def amount(x: float) -> str:
    """An amount as the forms take it (``recipe.parse_amount``'s inverse): 2048 -> ``2.048k``, 2e7 -> ``20M``."""
    for unit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= unit:
            return f"{x / unit:.12g}{suffix}"
    return f"{x:.12g}"
