"""The hot path of the one trainer (issue 24): fixed batch shapes, the device defaults (CPU unchanged), foreach
LARS, and (slow tier: CPU Inductor compiles for tens of seconds) the compiled network giving each method's loss
as eager does and being reused by the next trial of the process."""

import copy
import dataclasses

import pytest
import torch

from methods.base import TrainSet
from methods.optim import LARS, make_optimizer
from methods.registry import get_method
from methods.trainer import (
    COMPILE_ENV,
    FIXED_SHAPES_ENV,
    HotPath,
    cpu_has_bf16,
    epoch_batches,
    fit,
    steps_per_epoch,
)
from tests.conftest import digits_70_30

NEURAL = ["hscl", "csi", "msc", "milconvex", "deepsvdd", "deepsad", "cadet"]


def test_device_defaults_and_switches(monkeypatch):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    monkeypatch.delenv(FIXED_SHAPES_ENV, raising=False)
    assert HotPath.choose("cpu") == HotPath(compile=False, fixed_shapes=False)  # the CPU keeps today's loop
    assert HotPath.choose("cuda") == HotPath(compile=True, fixed_shapes=True)  # only reads the device type
    assert HotPath.choose("cpu", compile=True).compile  # a Config's compile=True: the CPU too
    monkeypatch.setenv(COMPILE_ENV, "0")  # the off switch on CUDA
    assert HotPath.choose("cuda") == HotPath(compile=False, fixed_shapes=True)
    monkeypatch.setenv(FIXED_SHAPES_ENV, "1")
    assert HotPath.choose("cpu").fixed_shapes
    monkeypatch.setenv(COMPILE_ENV, "yes")
    with pytest.raises(ValueError, match="ADSWEEP_COMPILE"):
        HotPath.choose("cpu")


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("n", [37, 64, 130, 150, 190, 257])
def test_fixed_batches_have_one_shape(n, world_size):
    batch = 64
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    batches = epoch_batches(order, batch, world_size, fixed_shapes=True)
    size = min(batch, n) // world_size * world_size
    assert {len(b) for b in batches} == {size}
    assert len(batches) == steps_per_epoch(n, size)
    counts = torch.bincount(torch.cat(batches), minlength=n)
    left_out, twice = int((counts == 0).sum()), int((counts == 2).sum())
    assert counts.max() <= 2 and left_out <= size / 2 and twice <= size / 2
    assert left_out == max(0, n - len(batches) * size) and twice == max(0, len(batches) * size - n)
    for b in batches:  # never the same image twice in one batch (a false negative for the contrastive losses)
        assert len(set(b.tolist())) == len(b)


@pytest.mark.parametrize("n", [37, 130, 150, 257])
def test_without_fixed_shapes_the_split_is_as_before(n):
    """The CPU default: round(n / B) near-equal batches covering every row once, cut to the world size
    (the loop's code before issue 24, written out)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    for world_size in (1, 2):
        before = [b[: len(b) // world_size * world_size] for b in order.tensor_split(max(1, round(n / 64)))]
        now = epoch_batches(order, 64, world_size, fixed_shapes=False)
        assert [b.tolist() for b in now] == [b.tolist() for b in before if len(b)]


def test_every_step_of_a_fit_has_the_fixed_shape():
    seen = {True: [], False: []}
    net = torch.nn.Linear(4, 1)
    data = torch.randn(150, 4)

    for fixed in (True, False):
        def step(forward, rows, epoch, g, fixed=fixed):
            seen[fixed].append(len(rows))
            return {"loss": forward(data[rows]).pow(2).mean()}

        result = fit(net, step, 150, epochs=3, batch_size=64, seed=0, device="cpu",
                     make_optimizer=lambda p: torch.optim.SGD(p, lr=0.1), hot_path=HotPath(fixed_shapes=fixed))
        assert result.summary()["fixed_batches"] is fixed and result.steps == 3 * 2
    assert seen[True] == [64] * 6  # 150 images: 2 steps of 64 (22 dropped, other ones each epoch)
    assert seen[False] == [75] * 6  # as before: 2 near-equal batches


def test_cpu_fit_reports_the_eager_loop(monkeypatch):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    monkeypatch.delenv(FIXED_SHAPES_ENV, raising=False)
    x_tr, _, y_tr, _ = digits_70_30()
    images = torch.as_tensor(x_tr[y_tr == 0])
    cls = get_method("hscl")
    m = cls(cls.Config(**{**cls.profiles["quick"], "epochs": 1}), torch.device("cpu"), 0)
    summary = m.fit(TrainSet(images, torch.zeros(len(images), dtype=torch.int8)))
    assert summary["compiled"] is False and summary["fixed_batches"] is False and summary["cuda_graphs"] is False


def test_foreach_lars_is_the_per_parameter_formula():
    """LARS's multi-tensor step against SimCLR's formula written per parameter, bit for bit on the CPU."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 36, 3))
    ref = [p.detach().clone() for p in net.parameters()]
    velocity = [torch.zeros_like(p) for p in ref]
    lr, momentum, wd, eta = 0.5, 0.9, 1e-4, 0.001
    opt = LARS(net.parameters(), lr=lr, momentum=momentum, weight_decay=wd, eta=eta)
    for i in range(3):
        x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        grads = [p.grad.clone() for p in net.parameters()]
        opt.step()
        for k, (w, g) in enumerate(zip(ref, grads, strict=True)):
            if w.ndim > 1:
                g = g + wd * w
                w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
                g = g * (eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0)
            velocity[k] = momentum * velocity[k] + lr * g
            ref[k] = w - velocity[k]
        for w, p in zip(ref, net.parameters(), strict=True):
            torch.testing.assert_close(p.detach(), w, rtol=1e-6, atol=1e-7)


def test_cpu_optimizers_are_not_fused():
    """Fused kernels change the arithmetic: on the CPU the optimisers stay torch's defaults."""
    p = [torch.nn.Parameter(torch.ones(3))]
    assert not make_optimizer("adam", p, 1e-3).defaults["fused"]
    assert not make_optimizer("sgd", p, 1e-3).defaults["fused"]


# ---- slow: CPU Inductor ------------------------------------------------------------------------------------


def _method(name: str, **over):
    cls = get_method(name)
    params = dataclasses.asdict(cls.Config())
    params.update(cls.profiles["quick"])
    params.update(over)
    return cls(cls.Config(**params), torch.device("cpu"), 0)


def _one_step(m, images, kind, state, forward_of) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The method's loss of one step on the first 32 images and its gradients, through forward_of(net), from the
    network state `state` (a step updates BatchNorm's running statistics, which the centres of Deep SVDD, MSC and
    MIL-convex are computed with)."""
    m.net.load_state_dict(state)
    step = m.step_loss(images, kind)
    m.start_epoch(1, images)
    m.net.zero_grad(set_to_none=True)
    m.net.train()
    loss = step(forward_of(m.net), torch.arange(32), 1, torch.Generator().manual_seed(1))["loss"]
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in m.net.parameters() if p.grad is not None]


@pytest.mark.slow
@pytest.mark.parametrize("name,bf16", [*[(m, False) for m in NEURAL], ("hscl", True)])
def test_compiled_step_gives_the_eager_loss(name, bf16, one_thread):
    x_tr, _, y_tr, _ = digits_70_30()
    images = torch.as_tensor(x_tr[y_tr == 0][:64])
    kind = torch.zeros(len(images), dtype=torch.int8)
    kind[:4], kind[4:8] = TrainSet.NORMAL, TrainSet.ANOMALY
    # quick HSCL and CSI default to bf16: fp32 is asked for explicitly where the method has the switch
    has_switch = "cpu_bf16" in {f.name for f in dataclasses.fields(get_method(name).Config)}
    m = _method(name, **({"cpu_bf16": bf16} if has_switch else {}))
    m.net = m.build_net(1)
    assert m.precision.amp == (bf16 and cpu_has_bf16())  # bf16 only where this CPU has it natively
    state = copy.deepcopy(m.net.state_dict())
    eager_loss, eager_grads = _one_step(m, images, kind, state, lambda net: net)
    compiled_loss, compiled_grads = _one_step(m, images, kind, state, lambda net: HotPath(compile=True).wrap(net))
    tol = {"rtol": 2e-2, "atol": 2e-2} if m.precision.amp else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(compiled_loss, eager_loss, **tol)
    grad_norm = torch.stack([g.norm() for g in eager_grads]).norm()
    compiled_norm = torch.stack([g.norm() for g in compiled_grads]).norm()
    torch.testing.assert_close(compiled_norm, grad_norm, rtol=5e-2 if m.precision.amp else 1e-3, atol=1e-5)


@pytest.mark.slow
def test_compiled_code_is_reused_by_the_next_trial(one_thread):
    """Two trials in one process (an actor that Tune reuses): the second compiles no new graph."""
    from torch._dynamo.utils import counters

    x_tr, _, y_tr, _ = digits_70_30()
    hot = HotPath(compile=True, fixed_shapes=True)
    graphs = []
    for normal in (0, 1):
        images = torch.as_tensor(x_tr[y_tr == normal])
        m = _method("deepsvdd", epochs=2)
        m.net = m.build_net(1)
        images = images.to(m.device)
        kind = torch.zeros(len(images), dtype=torch.int8)
        fit(m.net, m.step_loss(images, kind), len(images), epochs=2, batch_size=m.config.batch_size, seed=0,
            device="cpu", make_optimizer=m.optimizer, hot_path=hot)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] >= 1 and graphs[1] == graphs[0]
