"""Paths inside an export, as the fids of both dialects track them."""

from __future__ import annotations


def walked(path: str, names: list[str]) -> str:
    """The path inside the export after walking names ('..' stops at the root)."""
    parts = [p for p in path.split("/") if p]
    for n in names:
        if n == "..":
            if parts:
                parts.pop()
        elif n != ".":
            parts.append(n)
    return "/" + "/".join(parts)
