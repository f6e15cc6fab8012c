"""The one fit loop. Every neural method trains with it: HSCL, MIL-convex, CSI, MSC, CADet's pre-training,
Deep SVDD / SAD and the classifier CADet's experiments attack. A method supplies only its network, its
optimiser, its learning-rate schedule and the loss of one step (and, where it needs one, a hook called at
the start of every epoch, e.g. MSC's re-computed centre). Everything else is done here, once, the same way
for all:

- the training set stays on the device as uint8; a batch is an index gather, never a copy per image;
- every rank draws the same permutation of the images (the order generator, seeded by `seed`) and takes
  an equal shard of each global batch (a global batch is cut to a multiple of the world size); each rank
  augments with its own generator, seeded by (seed, rank); that is the seeding rule of every method;
- under torch.distributed the network is wrapped in DistributedDataParallel (optionally with synchronised
  BatchNorm on CUDA); the learning rate follows the schedule per step;
- the hot path (`HotPath`) depends on the device: on CUDA every batch has the same shape, the network is
  torch.compile'd and cuDNN picks its kernels by measuring (`cudnn.benchmark`); on the CPU the default is
  today's eager loop with near-equal batches, so CPU numbers stay what they were (each can be asked for);
- the step losses stay on the device: one host sync per epoch, averaged over the ranks;
- after the last epoch every rank takes rank 0's BatchNorm statistics, so all ranks score alike.

`Precision` holds the device flags every method shares (bf16 autocast, channels_last), `HotPath` how the
step runs there, and `seeded` builds a network from a seed without touching the caller's random state.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# (forward, rows, epoch, aug_generator) -> {"loss": total, "loss_<term>": ...}, all 0-d tensors. `forward` is
# the (DDP-wrapped, compiled) network to train through; rows (b,) are this rank's indices into the training set.
StepLoss = Callable[[Callable, torch.Tensor, int, torch.Generator], dict[str, torch.Tensor]]
# (step, steps_per_epoch) -> multiplier of the initial learning rate (see methods/optim.py)
Schedule = Callable[[int, int], float]


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX). Elsewhere torch emulates it."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without the probes
        return False


@dataclass(frozen=True)
class Precision:
    """Where and how a network computes: bf16 autocast and channels_last on CUDA; on the CPU only when asked
    (`cpu_bf16`, the CPU fast path): channels_last always, bf16 only where the CPU has it natively. With
    native bf16 a small-profile step is 3.8x plain fp32's; on an AVX-512 CPU without BF16 (measured: Xeon,
    avx512_vnni only, narrow ResNet-18 HSCL steps) emulated bf16 took 1.9x fp32's time and fp32 channels_last
    0.7x plain fp32's, so such a CPU computes in fp32, channels_last. The fit summary says which precision
    (`precision`), and so does the row's `extra`."""

    device: torch.device
    amp: bool = False
    channels_last: bool = False

    @staticmethod
    def choose(device, amp: bool, channels_last: bool, cpu_bf16: bool = False) -> Precision:
        device = torch.device(device)
        cuda = device.type == "cuda"
        return Precision(device, amp and (cuda or (cpu_bf16 and cpu_has_bf16())), channels_last and (cuda or cpu_bf16))

    @property
    def name(self) -> str:
        return "bf16" if self.amp else "fp32"

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def to_net(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch in the network's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def place(self, net: nn.Module) -> nn.Module:
        net = net.to(self.device)
        return net.to(memory_format=torch.channels_last) if self.channels_last else net


# Environment switches of the hot path: "0" or "1" overrides the device's default for every fit in the
# process (Ray's local workers inherit the driver's environment). Environment, not a Config field, because
# a new field or default would change every trial's key (the hash of its whole Config) and orphan the rows
# a store already holds; the fit summary (and so the row's `extra`) says what ran.
COMPILE_ENV, FIXED_SHAPES_ENV, CUDA_GRAPHS_ENV = "ADSWEEP_COMPILE", "ADSWEEP_FIXED_SHAPES", "ADSWEEP_CUDA_GRAPHS"


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name, "").strip()
    if value in ("", "auto"):
        return None
    if value not in ("0", "1"):
        raise ValueError(f"{name}={value!r}: use 0, 1 or leave it unset")
    return value == "1"


@dataclass(frozen=True)
class HotPath:
    """How a training step runs on a device. Defaults: on CUDA fixed batch shapes + torch.compile of the network
    (forward and backward) + cudnn.benchmark, the issue-24 hot path; on the CPU none of them, so that a CPU run
    gives the numbers it gave before (bit for bit, tests/test_hotpath.py). An argument of `choose` wins (a
    Config's compile=True asks for compilation on the CPU too), then the environment (ADSWEEP_COMPILE,
    ADSWEEP_FIXED_SHAPES, ADSWEEP_CUDA_GRAPHS = 0 / 1; ADSWEEP_COMPILE=0 is the off switch on CUDA), then the
    device default.

    - fixed_shapes: every step sees exactly B = min(batch_size, n) images (a multiple of the world size); the
      number of steps per epoch stays round(n / B), as without, so the schedule is the same; the epoch's
      permutation is cut after steps x B images, i.e. the remainder is dropped when steps x B < n (at most
      B / 2 images, other ones every epoch) and wrapped (the first steps x B - n images of the permutation
      train twice) when steps x B > n. Without it: near-equal batches of n / steps (255 and 254 ...), whose
      shapes change with every trial's n and defeat compiled code, CUDA graphs and cuDNN's autotuning.
    - compile: torch.compile of the (DDP-wrapped) network; its backward is compiled with it (AOTAutograd).
      The augmentation and the losses stay eager: they draw from explicit torch.Generators, on which Dynamo
      breaks the graph (torch 2.14: "Missing as_proxy() ... Generator"), so compiling the whole step function
      would give a dozen graphs per step and no CUDA graph. Compiled code is reused across the trials a
      process runs: Dynamo caches per code object and treats parameters as inputs, so a new network of the same
      class, shapes and precision runs the cached graphs (and Inductor's on-disk FX-graph cache serves
      another process); with fixed shapes compilation is static (dynamic=False).
    - cuda_graphs: compile with mode="reduce-overhead" (CUDA graphs), for steps too small to keep a GPU busy
      (MSC's and Deep SVDD's 128 rows). Off by default: not measured on a GPU yet (benchmarks/gpu_check.py
      measures it); CUDA only.
    """

    compile: bool = False
    fixed_shapes: bool = False
    cuda_graphs: bool = False

    @staticmethod
    def choose(device, compile: bool | None = None, fixed_shapes: bool | None = None,
               cuda_graphs: bool | None = None) -> HotPath:
        cuda = torch.device(device).type == "cuda"

        def pick(arg, env):
            return arg if arg is not None else (flag if (flag := _env_flag(env)) is not None else cuda)

        graphs = cuda and (cuda_graphs if cuda_graphs is not None else bool(_env_flag(CUDA_GRAPHS_ENV)))
        return HotPath(pick(compile, COMPILE_ENV) or graphs, pick(fixed_shapes, FIXED_SHAPES_ENV) or graphs, graphs)

    def wrap(self, model: nn.Module) -> Callable:
        """The network to train through: compiled when asked (static shapes with fixed batches)."""
        if not self.compile:
            return model
        return torch.compile(model, dynamic=False if self.fixed_shapes else None,
                             mode="reduce-overhead" if self.cuda_graphs else None)


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Global steps per epoch, with or without fixed shapes: round(n / B), at least 1."""
    return max(1, round(n_images / batch_size)) if batch_size > 0 else 1


def fixed_batch_size(n_images: int, batch_size: int, world_size: int) -> int:
    """The one global batch size of a fit with fixed shapes: min(B, n), cut to a multiple of the world size."""
    return min(batch_size, n_images) // world_size * world_size


def epoch_batches(order: torch.Tensor, batch_size: int, world_size: int, fixed_shapes: bool) -> list[torch.Tensor]:
    """One epoch's global batches (row indices) from its permutation `order` of the n training rows, each cut to
    a multiple of the world size (equal DDP shards). fixed_shapes: all of one size, see `HotPath`; otherwise
    round(n / B) near-equal batches that cover every row once (the CPU default)."""
    n = order.numel()
    if not fixed_shapes:
        batches = [b[: len(b) // world_size * world_size] for b in order.tensor_split(steps_per_epoch(n, batch_size))]
        return [b for b in batches if len(b)]
    size = fixed_batch_size(n, batch_size, world_size)
    if size == 0:
        return []
    steps = steps_per_epoch(n, size)
    need = steps * size  # within size / 2 of n: drop the tail of the permutation or wrap onto its head
    rows = order[:need] if need <= n else torch.cat([order, order[: need - n]])
    return list(rows.view(steps, size).unbind(0))


def seeded(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    """make() with torch's CPU generator seeded by `seed` (same weights on any device), leaving the caller's
    global random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def from_rank0(t: torch.Tensor) -> torch.Tensor:
    """Under DDP every rank takes rank 0's copy of t (e.g. a centre computed with rank-local BatchNorm stats)."""
    if world()[1] > 1:
        dist.broadcast(t, src=0)
    return t


def generators(seed: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """(order, augmentation): the batch order is the same on every rank, the augmentations are each rank's own."""
    rank = world()[0]
    order = torch.Generator(device=device).manual_seed(int(seed))
    aug_seed = int(np.random.SeedSequence([int(seed) % 2**64, rank]).generate_state(1)[0])
    return order, torch.Generator(device=device).manual_seed(aug_seed)


@dataclass
class FitResult:
    epochs: int
    steps: int
    world_size: int
    seconds: float
    images_per_second: float | None
    history: dict[str, float] = field(default_factory=lambda: {"loss": float("nan")})  # the last epoch's means
    hot_path: HotPath = field(default_factory=HotPath)

    def summary(self) -> dict:
        """What `Method.fit` returns: epochs, steps, final_loss, final_<term>, world_size, fit_seconds, and how the
        step ran (compiled, fixed_batches, cuda_graphs: into the row's `extra`)."""
        return {"epochs": self.epochs, "steps": self.steps, "final_loss": self.history.get("loss", float("nan")),
                **{f"final_{k}": v for k, v in self.history.items() if k != "loss"},
                "world_size": self.world_size, "fit_seconds": self.seconds, "compiled": self.hot_path.compile,
                "fixed_batches": self.hot_path.fixed_shapes, "cuda_graphs": self.hot_path.cuda_graphs}


def fit(net: nn.Module, step_loss: StepLoss, n_images: int, *, epochs: int, batch_size: int, seed: int,
        device: torch.device, make_optimizer: Callable[[list], torch.optim.Optimizer],
        schedule: Schedule | None = None, compile: bool = False, hot_path: HotPath | None = None,
        sync_bn: bool = False,
        start_epoch: Callable[[int], None] | None = None,
        on_epoch: Callable[[int, dict], None] | None = None) -> FitResult:
    """Train `net` in place for `epochs` passes over n_images training rows. on_epoch(epoch, {"loss", ...,
    "lr"}) after each epoch (1-based; under DDP on every rank, with the losses averaged over the ranks).
    compile=True (a Config's `compile`) compiles on every device, the CPU too; False leaves it to the device's
    default. hot_path: exactly this hot path (benchmarks, tests); None = `HotPath.choose` for the device."""
    device = torch.device(device)
    hot = hot_path or HotPath.choose(device, compile=True if compile else None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN measures its kernels once per shape
    t0 = time.perf_counter()
    rank, world_size = world()
    if world_size > 1 and sync_bn and device.type == "cuda":  # torch has no SyncBatchNorm kernel on the CPU
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # replaces the BatchNorm children in place
    model = net
    if world_size > 1:
        model = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    forward = hot.wrap(model)
    opt = make_optimizer(list(net.parameters()))
    steps = steps_per_epoch(n_images, fixed_batch_size(n_images, batch_size, world_size) if hot.fixed_shapes
                            else batch_size)
    lr_at = schedule or (lambda step, per_epoch: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, steps))
    order_gen, aug_gen = generators(seed, device)

    history: dict[str, float] = {"loss": float("nan")}
    seen = 0
    for epoch in range(1, epochs + 1):
        if start_epoch is not None:
            start_epoch(epoch)
        net.train()
        totals, names = [], None
        order = torch.randperm(n_images, generator=order_gen, device=device)
        for batch in epoch_batches(order, batch_size, world_size, hot.fixed_shapes):  # equal DDP shards
            parts = step_loss(forward, batch.tensor_split(world_size)[rank], epoch, aug_gen)
            opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            opt.step()
            sched.step()
            names = list(parts)
            totals.append(torch.stack([v.detach().float() for v in parts.values()]))
            seen += len(batch)
        if totals:
            means = torch.stack(totals).mean(0)
            if world_size > 1:
                dist.all_reduce(means)
                means /= world_size
            history = dict(zip(names, means.tolist(), strict=True))  # the one host sync per epoch
        if on_epoch is not None:
            on_epoch(epoch, {**history, "lr": sched.get_last_lr()[0]})

    if world_size > 1:  # BatchNorm running statistics: rank 0's everywhere
        for buf in net.buffers():
            dist.broadcast(buf, src=0)
    seconds = time.perf_counter() - t0
    return FitResult(epochs, epochs * steps, world_size, seconds, seen / seconds if seconds > 0 and seen else None,
                     history, hot)
