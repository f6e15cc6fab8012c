"""What the three commands (sweep, search, results) share: one-line errors with exit code 2, the parsers of
list-valued flags, `--set KEY=VALUE` overrides typed like the defaults, parameter files, and the code
version every row records."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import yaml

from methods.registry import get_method

SPLIT_KEYS = {"val_fraction": float}  # --set keys that belong to the split, not to a method


class UserError(ValueError):
    """Bad input: one line saying what is wrong and how to fix it."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit 2 (not a 19-line usage block)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def anomaly_classes(text: str) -> list[int] | str:
    return "next" if text.strip() == "next" else int_list(text)


def name_list(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def _coerce(key: str, raw: str, default):
    """Parse ``raw`` as the type of the parameter's default (bool, int, float or str)."""
    kind = type(default)
    try:
        if kind is bool:
            return {"true": True, "false": False, "1": True, "0": False}[raw.strip().lower()]
        return kind(raw.strip()) if kind in (int, float) else raw
    except (KeyError, ValueError):
        raise UserError(f"--set {key}={raw}: expected a {kind.__name__} like the default {default!r}") from None


def parse_overrides(pairs: list[str], methods: list[str]) -> tuple[dict, dict]:
    """``--set`` pairs -> (method parameter overrides, split overrides), typed like the defaults."""
    defaults = {}
    for m in methods:
        for field in dataclasses.fields(get_method(m).Config):
            defaults.setdefault(field.name, getattr(get_method(m).Config(), field.name))
    method_over, split_over = {}, {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set '{pair}': write KEY=VALUE, e.g. --set epochs=5")
        if key in SPLIT_KEYS:
            split_over[key] = _coerce(key, raw, SPLIT_KEYS[key]())
        elif key in defaults:
            method_over[key] = _coerce(key, raw, defaults[key])
        else:
            known = ", ".join(sorted(defaults) + sorted(SPLIT_KEYS))
            raise UserError(f"--set {key}: unknown parameter for {', '.join(methods)}; known: {known}")
    return method_over, split_over


def read_params_file(path: str, methods: list[str]) -> dict[str, dict]:
    """``{method: params}`` from a YAML file with keys ``method`` and ``params`` (a search's best)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"--params-from {path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"--params-from {path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict) or "method" not in data:
        raise UserError(f"--params-from {path}: expected keys 'method' and 'params'")
    method = data["method"]
    if method not in methods:
        raise UserError(f"--params-from {path}: parameters are for '{method}', which this run does not use "
                        f"({', '.join(methods)})")
    typed, _ = parse_overrides([f"{k}={v}" for k, v in data["params"].items()], [method])
    return {method: typed}


def fail(exc: Exception) -> int:
    """Print a bad-input exception as one line; the exit code for it."""
    print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
    return 2


def git_sha() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_version() -> str:
    try:
        return metadata.version("adsweep")
    except metadata.PackageNotFoundError:
        return "unknown"
