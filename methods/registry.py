"""The one registry of methods. Adding a method = one file in methods/ + one line here."""

from __future__ import annotations

from methods.cadet import CADet
from methods.csi import CSI
from methods.deepsad import DeepSAD
from methods.deepsvdd import DeepSVDD
from methods.hscl import HSCL
from methods.iforest import IForest
from methods.kde import KDE
from methods.milconvex import MILConvex
from methods.msc import MSC
from methods.ocsvm import OCSVM

METHODS: dict[str, type] = {
    "hscl": HSCL,
    "deepsvdd": DeepSVDD,
    "deepsad": DeepSAD,
    "ocsvm": OCSVM,
    "iforest": IForest,
    "kde": KDE,
    "milconvex": MILConvex,
    "csi": CSI,
    "msc": MSC,
    "cadet": CADet,
}


def get_method(name: str) -> type:
    """-> the method class registered under `name`; ValueError naming the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method '{name}'; known methods: {', '.join(sorted(METHODS))}") from None
