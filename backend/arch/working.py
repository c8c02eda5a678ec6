"""Worked formulas: each estimate records the formula it evaluates with the model's own numbers filled in.

A function that computes a figure builds a :class:`Working` as it goes: ``w.step(...)`` takes the symbolic
formula, the same formula with this model's numbers, and the value the code computed, and returns that
value, so the number and the text shown under "how this is computed" come from one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

Number = Union[int, float]


@dataclass(frozen=True)
class Step:
    name: str  # what is computed, e.g. "KV bytes per token"
    formula: str  # in symbols
    numbers: str  # the same with this model's numbers
    value: Number
    unit: str = ""

    def parts(self) -> list[str]:
        """formula, numbers and value, without repeats (a formula that is already a number is shown once)."""
        out = [self.formula]
        for part in (self.numbers, fmt(self.value, self.unit)):
            if part and part != out[-1]:
                out.append(part)
        return out

    def text(self) -> str:
        return f"{self.name} = " + " = ".join(self.parts())


@dataclass
class Working:
    """The steps behind one figure, in the order they were computed."""

    title: str
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def step(self, name: str, formula: str, numbers: str, value: Number, unit: str = "") -> Number:
        """Record one step and return ``value`` (so it can be used inline)."""
        self.steps.append(Step(name, formula, numbers, value, unit))
        return value

    def note(self, text: str) -> None:
        self.notes.append(text)

    def value(self, name: str) -> Number:
        """The value of the last step called ``name`` (KeyError if none)."""
        for s in reversed(self.steps):
            if s.name == name:
                return s.value
        raise KeyError(name)

    def markdown(self, escape: Callable[[str], str] = str) -> str:
        """The steps as a Markdown list (for an expander), notes after them. ``escape`` is applied to the title,
        step names and notes, which may carry a visitor's model or folder name (formulas and numbers are ours)."""
        lines = [f"**{escape(self.title)}**", ""]
        for s in self.steps:
            parts = s.parts()
            lines.append(
                f"- {escape(s.name)} = "
                + " = ".join(f"`{p}`" for p in parts[:-1])
                + (" = " if len(parts) > 1 else "")
                + f"**{parts[-1]}**"
            )
        if self.notes:
            lines += [""] + [f"_{escape(n)}_" for n in self.notes]
        return "\n".join(lines)

    def text(self) -> str:
        return "\n".join([self.title] + ["  " + s.text() for s in self.steps] + ["  note: " + n for n in self.notes])


def fmt(v: Number, unit: str = "") -> str:
    """A value for a formula line: integers with separators, bytes also in GiB/MiB, times in ms/µs."""
    if unit == "B":
        base = f"{int(round(v)):,} B"
        if abs(v) >= 1 << 30:
            return f"{base} ({v / (1 << 30):,.2f} GiB)"
        if abs(v) >= 1 << 20:
            return f"{base} ({v / (1 << 20):,.2f} MiB)"
        return base
    if unit == "s":
        if abs(v) >= 1:
            return f"{v:,.3f} s"
        if abs(v) >= 1e-3:
            return f"{v * 1e3:,.3f} ms"
        return f"{v * 1e6:,.2f} µs"
    if unit == "FLOP":
        return f"{v:,.4g} FLOP" if abs(v) < 1e6 else f"{v / 1e9:,.3f} GFLOP"
    text = num(v)
    return f"{text} {unit}" if unit else text


def num(v: Number) -> str:
    """A number as it appears inside a formula."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return f"{int(v):,}"
    if abs(v) >= 1e6:
        return f"{v:,.4g}"
    return f"{v:,.4g}"
