"""The registry of conformance cases.

A case is a function taking a Context; it passes by returning (optionally a
text describing what it observed), fails by raising Failure, and is not
applicable when it raises NotApplicable. Cases are registered with @case,
which names the docs/protocol.md section the case checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..protocol.constants import Dialect

if TYPE_CHECKING:
    from .context import Context

DOTL = frozenset({Dialect.P9P2000L})
CLASSIC = frozenset({Dialect.P9P2000U, Dialect.P9P2000})
ALL = frozenset(Dialect)

MUST = "MUST"
SHOULD = "SHOULD"

CaseFunc = Callable[["Context"], "str | None"]


class Failure(Exception):
    """The server did not do what the section says; the text is what it did."""


class NotApplicable(Exception):
    """The case cannot be checked against this server; the text says why."""


@dataclass(frozen=True)
class Case:
    id: str
    section: str  # "§4.4"
    level: str  # MUST or SHOULD
    dialects: frozenset[Dialect]
    title: str
    func: CaseFunc


CASES: dict[str, Case] = {}


def case(
    case_id: str,
    section: str,
    title: str,
    *,
    level: str = MUST,
    dialects: frozenset[Dialect] = DOTL,
) -> Callable[[CaseFunc], CaseFunc]:
    """Register the decorated function as a case."""

    def register(func: CaseFunc) -> CaseFunc:
        add_case(Case(case_id, section, level, dialects, title, func))
        return func

    return register


def add_case(c: Case) -> None:
    if c.id in CASES:
        raise ValueError(f"duplicate conformance case id {c.id!r}")
    if c.level not in (MUST, SHOULD):
        raise ValueError(f"case {c.id}: level must be MUST or SHOULD")
    if not c.section.startswith("§"):
        raise ValueError(f"case {c.id}: section must look like §N.M")
    CASES[c.id] = c


def section_key(section: str) -> tuple[int, ...]:
    """Sort key of '§5.7.1'."""
    return tuple(int(p) for p in section.lstrip("§").split(".") if p.isdigit())


def all_cases() -> list[Case]:
    """Every case, in section order (loading every case module first)."""
    from . import cases  # noqa: F401 - registers the cases

    return sorted(CASES.values(), key=lambda c: (section_key(c.section), c.id))
