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
  BatchNorm on CUDA), optionally torch.compile'd; the learning rate follows the schedule per step;
- the step losses stay on the device: one host sync per epoch, averaged over the ranks;
- after the last epoch every rank takes rank 0's BatchNorm statistics, so all ranks score alike.

`Precision` holds the device flags every method shares (bf16 autocast, channels_last) and `seeded`
builds a network from a seed without touching the caller's random state.
"""

from __future__ import annotations

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

    def summary(self) -> dict:
        """What `Method.fit` returns: epochs, steps, final_loss, final_<term>, world_size, fit_seconds."""
        return {"epochs": self.epochs, "steps": self.steps, "final_loss": self.history.get("loss", float("nan")),
                **{f"final_{k}": v for k, v in self.history.items() if k != "loss"},
                "world_size": self.world_size, "fit_seconds": self.seconds}


def fit(net: nn.Module, step_loss: StepLoss, n_images: int, *, epochs: int, batch_size: int, seed: int,
        device: torch.device, make_optimizer: Callable[[list], torch.optim.Optimizer],
        schedule: Schedule | None = None, compile: bool = False, sync_bn: bool = False,
        start_epoch: Callable[[int], None] | None = None,
        on_epoch: Callable[[int, dict], None] | None = None) -> FitResult:
    """Train `net` in place for `epochs` passes over n_images training rows. on_epoch(epoch, {"loss", ...,
    "lr"}) after each epoch (1-based; under DDP on every rank, with the losses averaged over the ranks)."""
    device = torch.device(device)
    t0 = time.perf_counter()
    rank, world_size = world()
    if world_size > 1 and sync_bn and device.type == "cuda":  # torch has no SyncBatchNorm kernel on the CPU
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # replaces the BatchNorm children in place
    model = net
    if world_size > 1:
        model = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    forward = torch.compile(model) if compile else model
    opt = make_optimizer(list(net.parameters()))
    steps = max(1, round(n_images / batch_size))  # near-equal global batches that cover every image once
    lr_at = schedule or (lambda step, steps_per_epoch: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, steps))
    order_gen, aug_gen = generators(seed, device)

    history: dict[str, float] = {"loss": float("nan")}
    seen = 0
    for epoch in range(1, epochs + 1):
        if start_epoch is not None:
            start_epoch(epoch)
        net.train()
        totals, names = [], None
        for batch in torch.randperm(n_images, generator=order_gen, device=device).tensor_split(steps):
            batch = batch[: len(batch) // world_size * world_size]  # equal shards: DDP averages like one process
            if len(batch) == 0:
                continue
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
                     history)
