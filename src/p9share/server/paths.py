"""Paths inside an export, as the fids of both dialects track them."""

from __future__ import annotations


def walked(path: str, names: list[str]) -> str:
    """The path inside the export after walking names ('..' stops at the root)."""
    if not names:
        return path
    if len(names) == 1 and names[0] not in (".", ".."):  # the kernel client's usual walk
        return ("" if path == "/" else path) + "/" + names[0]
    parts = [p for p in path.split("/") if p]
    for n in names:
        if n == "..":
            if parts:
                parts.pop()
        elif n != ".":
            parts.append(n)
    return "/" + "/".join(parts)
