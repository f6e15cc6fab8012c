"""Shared fixtures: one small real quick sweep, run once per test session."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The real data beside the checkout (../shared/data, see its README); CI clones main with shared/ beside it.
SHARED_DATA = next((p.resolve() for p in (ROOT.parent / "shared" / "data", Path("/work/shared/data")) if p.is_dir()),
                   ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def small_store(tmp_path_factory) -> Path:
    """A store from a real sweep: normal class 0, known classes 1 and 2, three gamma_p: 6 trials."""
    store = tmp_path_factory.mktemp("store") / "results"
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "scenario2", "--methods", "hscl", "--normal-classes", "0",
         "--anomaly-classes", "1,2", "--storage", str(store), "--set", "epochs=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return store
