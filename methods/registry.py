"""The one registry of methods. Adding a method = one file in methods/ + one line here."""

from __future__ import annotations

from methods.hscl import HSCL

METHODS: dict[str, type] = {
    "hscl": HSCL,
}


def get_method(name: str) -> type:
    """-> the method class registered under `name`; ValueError naming the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method '{name}'; known methods: {', '.join(sorted(METHODS))}") from None
