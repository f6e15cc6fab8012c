"""Shared fixtures and helpers: one small real quick sweep, run once per test session; one CPU thread;
the digits split the method tests share; two DDP ranks that must agree."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The real data beside the checkout (../shared/data, see its README); CI clones main with shared/ beside it. A
# checkout elsewhere names it with ADSWEEP_SHARED_DATA.
SHARED_DATA = Path(os.environ.get("ADSWEEP_SHARED_DATA") or ROOT.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def small_store(tmp_path_factory) -> Path:
    """A store from a real sweep: normal class 0, known classes 1 and 2, three gamma_p: 6 trials. The quick
    profile's own epochs, so that every trial learns: at 3 epochs one of the six sat at chance (0.50), and the
    tests of paired statistics against a shuffled copy then hung on the shuffle."""
    store = tmp_path_factory.mktemp("store") / "results"
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "scenario2", "--methods", "hscl", "--normal-classes", "0",
         "--anomaly-classes", "1,2", "--storage", str(store)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return store


def digits_70_30():
    """sklearn's 1,797 digits as uint8 (N, 1, 8, 8) images in 0..255, split 70/30 stratified by class
    (random_state 0), for method tests that build their own miniature splits: x_train, x_test, y_train, y_test."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(np.round(digits.images * 255 / 16), dtype=torch.uint8)[:, None]
    return train_test_split(x, digits.target, test_size=0.3, random_state=0, stratify=digits.target)


@pytest.fixture
def one_thread():
    """One intra-op thread, as a quick-profile trial runs: on a shared 2-core machine two threads make
    CPU training steps erratic (a ResNet step: 3 s to 25 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ddp_fit_rank(rank: int, world: int, init_file: str, out_dir: str, build, images, kind):
    """One gloo rank: fit build() on TrainSet(images, kind), save its weights, fit summary and scores."""
    import torch
    import torch.distributed as dist

    from methods.base import TrainSet

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        m = build()
        summary = m.fit(TrainSet(images, kind))
        torch.save({"state": m.net.state_dict(), "summary": summary, "scores": m.score(images[:40])},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def assert_two_ddp_ranks_agree(tmp_path: Path, build, images, kind) -> dict:
    """Fit the method that build() makes (a picklable callable) on two DDP ranks over the same data; both
    ranks must end with the same all-reduced loss, parameters, BatchNorm buffers and scores. Returns rank 0's
    {"state", "summary", "scores"}."""
    import numpy as np
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_ddp_fit_rank, args=(2, str(tmp_path / "init"), str(tmp_path), build, images, kind), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["summary"]["world_size"] == 2
    assert r0["summary"]["final_loss"] == r1["summary"]["final_loss"]  # all-reduced epoch loss
    for name, t in r0["state"].items():  # parameters and BatchNorm buffers
        assert torch.equal(t, r1["state"][name]), name
    assert np.array_equal(r0["scores"], r1["scores"])
    return r0
