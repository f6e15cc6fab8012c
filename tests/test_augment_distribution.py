"""The batched augmentations draw from the distributions their definitions state; bf16 training tracks fp32.

Correctness only (CPU, a few seconds). Crops are read back from the images themselves: a test
pattern whose pixel values are their own column and row index turns every output into a record of
where it was sampled, so the crop's width, height, centre and mirror sign come out of two
neighbouring pixels (bilinear sampling of a linear ramp is exact away from the border). Frequencies
(flip, grayscale, jitter) are checked against their probability within 4.5 binomial standard
deviations, distributions against the definition with a two-sample Kolmogorov-Smirnov test at
p > 0.001. Every generator is seeded, so the outcome is fixed for a given torch.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from methods.augment import _gray, _hue_rotate, color_jitter, random_grayscale, rotations, simclr_augment
from methods.base import TrainSet
from methods.hscl import HSCL, HSCLConfig

N = 4000  # samples per frequency / distribution check
SIDE = 32  # CIFAR-sized


def within_binomial(count: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def ramp_images(n: int, side: int = SIDE) -> torch.Tensor:
    """uint8 (n, 3, side, side): channel 0 = 8 * column, channel 1 = 8 * row, channel 2 = 128."""
    col = torch.arange(side).view(1, side).expand(side, side)
    img = torch.stack([8 * col, 8 * col.T, torch.full_like(col, 128)]).to(torch.uint8)
    return img.expand(n, -1, -1, -1).contiguous()


def crops_read_back(out: torch.Tensor) -> dict[str, torch.Tensor]:
    """Normalised float views of ramp_images -> per sample: crop width and height as fractions of the
    side (signed width: negative = mirrored), and the crop centre in [-1, 1] coordinates."""
    pix = ((out.double() * 0.5 + 0.5) * 255 / 8)  # back to pixel coordinates
    m = out.shape[-1] // 2
    x, y = pix[:, 0], pix[:, 1]
    # Neighbouring output pixels at the centre sit w (resp. h) input pixels apart.
    w = (x[:, :, m] - x[:, :, m - 1]).mean(dim=1)
    h = (y[:, m, :] - y[:, m - 1, :]).mean(dim=1)
    cx = (x[:, :, m] + x[:, :, m - 1]).mean(dim=1) / 2
    cy = (y[:, m, :] + y[:, m - 1, :]).mean(dim=1) / 2
    side = out.shape[-1]
    return {"w": w, "h": h, "cx": (2 * cx + 1) / side - 1, "cy": (2 * cy + 1) / side - 1}


def crop_definition(n: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed: int = 0) -> dict[str, np.ndarray]:
    """The crop as methods/augment.py defines it, drawn with numpy: area ~ U(scale), log aspect ratio
    ~ U(log ratio), width sqrt(area * r) and height sqrt(area / r), each clamped to the whole side."""
    rng = np.random.default_rng(seed)
    area = rng.uniform(*scale, n)
    r = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), n))
    w, h = np.minimum(np.sqrt(area * r), 1), np.minimum(np.sqrt(area / r), 1)
    return {"w": w, "h": h, "area": w * h}


@pytest.fixture(scope="module")
def crop_views() -> dict[str, np.ndarray]:
    """N views of the ramp through simclr_augment with colour ops off: only crop + flip act."""
    g = torch.Generator().manual_seed(0)
    out = simclr_augment(ramp_images(N), crop_scale_min=0.08, jitter=0.0, gray_p=0.0, generator=g)
    # Read back to 1e-4 (float32 sampling leaves ~1e-6 of noise; a clamped side must read exactly 1).
    return {k: np.round(v.numpy(), 4) for k, v in crops_read_back(out).items()}


def test_read_back_recovers_known_crops():
    # The read-back itself, on the identity and on the plain mirror.
    views = simclr_augment(ramp_images(64), crop_scale_min=1.0, jitter=0.0, gray_p=0.0,
                           generator=torch.Generator().manual_seed(0))
    got = crops_read_back(views)
    # scale (1, 1): area 1, aspect ratio in [3/4, 4/3] -> one side clamped to 1, the other >= sqrt(3/4).
    assert torch.allclose(got["w"].abs().maximum(got["h"]), torch.ones(64, dtype=torch.float64), atol=1e-3)
    assert (got["w"].abs().minimum(got["h"]) >= math.sqrt(3 / 4) - 1e-3).all()


def test_crop_area_and_aspect_follow_the_definition(crop_views):
    w, h = np.abs(crop_views["w"]), crop_views["h"]
    area = w * h
    assert area.min() >= 0.08 - 1e-3 and area.max() <= 1 + 1e-3  # scale range (clamping only shrinks)
    assert w.max() <= 1 + 1e-3 and h.max() <= 1 + 1e-3
    unclamped = (w < 0.999) & (h < 0.999)
    aspect = w[unclamped] / h[unclamped]
    assert aspect.min() >= 3 / 4 - 1e-3 and aspect.max() <= 4 / 3 + 1e-3
    ref = {k: np.round(v, 4) for k, v in crop_definition(200_000).items()}
    assert ks_2samp(area, ref["area"]).pvalue > 1e-3
    assert ks_2samp(w, ref["w"]).pvalue > 1e-3
    assert ks_2samp(h, ref["h"]).pvalue > 1e-3
    assert ks_2samp(w / h, ref["w"] / ref["h"]).pvalue > 1e-3
    # Not a degenerate distribution: the mean area of the clamped definition is about 0.5.
    assert abs(area.mean() - ref["area"].mean()) < 0.02


def test_crops_lie_inside_the_image_with_uniform_centres(crop_views):
    w, h = np.abs(crop_views["w"]), crop_views["h"]
    cx, cy = crop_views["cx"], crop_views["cy"]
    assert (np.abs(cx) <= 1 - w + 1e-3).all() and (np.abs(cy) <= 1 - h + 1e-3).all()
    # The centre is uniform over the positions that keep the crop inside: cx / (1 - w) ~ U(-1, 1).
    free = w < 0.95
    u = cx[free] / (1 - w[free])
    assert ks_2samp(u, np.random.default_rng(1).uniform(-1, 1, 100_000)).pvalue > 1e-3


def test_flips_half_the_time(crop_views):
    flipped = int((crop_views["w"] < 0).sum())
    assert within_binomial(flipped, N, 0.5), flipped
    # Flip and crop size are drawn independently: about half of the small crops are mirrored too.
    small = np.abs(crop_views["w"]) * crop_views["h"] < 0.4
    assert within_binomial(int((crop_views["w"][small] < 0).sum()), int(small.sum()), 0.5)


def test_grayscale_with_its_probability():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (N, 3, 8, 8), dtype=torch.uint8)  # colourful noise
    for p in (0.2, 0.5):
        out = simclr_augment(x, gray_p=p, generator=g)  # the whole pipeline, jitter included
        gray = (out[:, 0] - out[:, 1]).abs().amax(dim=(1, 2)) + (out[:, 1] - out[:, 2]).abs().amax(dim=(1, 2)) < 1e-5
        assert within_binomial(int(gray.sum()), N, p), (p, int(gray.sum()))
    direct = random_grayscale(x.float() / 255, p=0.2, generator=g)
    assert within_binomial(int((direct[:, 0] == direct[:, 2]).all(dim=(1, 2)).sum()), N, 0.2)


def test_colour_jitter_probability_and_brightness_range():
    # A flat mid-grey image: contrast, saturation and hue leave grey alone, so a jittered sample is
    # exactly 0.5 * its brightness factor, and an untouched one stays 0.5.
    g = torch.Generator().manual_seed(2)
    x = torch.full((N, 3, 4, 4), 0.5)
    out = color_jitter(x, strength=0.4, p=0.8, generator=g)
    value = out[:, 0, 0, 0]
    assert torch.allclose(out, value.view(-1, 1, 1, 1).expand_as(out), atol=1e-5)  # still flat and grey
    untouched = (value == 0.5).numpy()
    assert within_binomial(int(untouched.sum()), N, 0.2)
    factors = (2 * value[~torch.from_numpy(untouched)]).numpy()
    assert factors.min() >= 0.6 - 1e-5 and factors.max() <= 1.4 + 1e-5
    assert ks_2samp(factors, np.random.default_rng(3).uniform(0.6, 1.4, 100_000)).pvalue > 1e-3


def test_hue_rotation_keeps_luma_and_full_turn_is_identity():
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    angle = torch.linspace(-math.pi, math.pi, 16)
    assert torch.allclose(_gray(_hue_rotate(x, angle)), _gray(x), atol=1e-5)
    assert torch.allclose(_hue_rotate(x, torch.full((16,), 2 * math.pi)), x, atol=1e-5)
    assert torch.allclose(_hue_rotate(x, torch.zeros(16)), x, atol=1e-5)


def test_rotation_labels_match_the_images():
    b = 6
    x = torch.randint(0, 256, (b, 3, SIDE, SIDE), dtype=torch.uint8)
    x[:, :, 0, 0] = 255  # a marked top-left corner
    x[:, :, 0, -1] = x[:, :, -1, 0] = x[:, :, -1, -1] = 0
    r = rotations(x, 4)
    # Row i's rotation label is i // b (HSCL's "row = k * 2B + view * B + i", with 2B rows per block).
    corner_after = {0: (0, 0), 1: (SIDE - 1, 0), 2: (SIDE - 1, SIDE - 1), 3: (0, SIDE - 1)}  # 90 deg steps, CCW
    for row in range(4 * b):
        k, src = row // b, row % b
        assert torch.equal(torch.rot90(r[row], -k, dims=(1, 2)), x[src])  # rotating back is the identity
        i, j = corner_after[k]
        assert (r[row, :, i, j] == 255).all(), (row, k)
        others = [c for c in corner_after.values() if c != (i, j)]
        assert all((r[row, :, a, c] == 0).all() for a, c in others)


def test_rotated_views_share_their_crop():
    # HSCL rotates after augmenting: the 4 copies of a view are the same crop, turned.
    views = simclr_augment(ramp_images(8), jitter=0.0, gray_p=0.0, generator=torch.Generator().manual_seed(5))
    r = rotations(views, 4)
    for k in range(4):
        assert torch.equal(torch.rot90(r[8 * k: 8 * (k + 1)], -k, dims=(2, 3)), views)


# ---- bf16 autocast vs fp32: the HSCL loss and a few training steps ----------------------------------


def _smooth_images(n: int, seed: int) -> torch.Tensor:
    """CIFAR-sized uint8 images with structure (upsampled 4x4 noise), not white noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return (torch.nn.functional.interpolate(low, size=(SIDE, SIDE), mode="bilinear") * 255).to(torch.uint8)


def _train_steps(bf16: bool, net: str, steps: int, batch: int) -> list[dict[str, float]]:
    """HSCL.loss + backward + Adam for a few steps on CPU, optionally under CPU bf16 autocast (HSCL's
    own amp switch applies on CUDA only, so the autocast is put around its loss here)."""
    images = _smooth_images(64, seed=0)
    kind = torch.zeros(64, dtype=torch.int8)
    kind[:6], kind[6:12] = TrainSet.ANOMALY, TrainSet.NORMAL
    m = HSCL(HSCLConfig(net=net, batch_size=batch), torch.device("cpu"), seed=0)
    m.net = m.build_net(3)
    opt = torch.optim.Adam(m.net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(2))
    out = []
    for s in range(steps):
        idx = order[(s * batch) % 64:][:batch]
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with cast:
            parts = m.loss(m.net, images[idx], kind[idx], g)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        opt.step()
        out.append({k: float(v.detach()) for k, v in parts.items()})
    return out


def test_cpu_autocast_really_runs_bf16():
    m = HSCL(HSCLConfig(net="resnet18"), torch.device("cpu"), seed=0)
    net = m.build_net(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net.encoder(torch.rand(2, 3, SIDE, SIDE)).dtype == torch.bfloat16
        assert net(torch.rand(2, 3, SIDE, SIDE)).dtype == torch.float32  # z is float32 for the losses


@pytest.mark.parametrize("net, batch", [pytest.param("resnet18", 4, marks=pytest.mark.slow),  # 10-19 s
                                        ("cnn_small", 8)])
def test_bf16_and_fp32_losses_stay_close(net, batch, one_thread):
    # Same seed, same batches, same augmentation draws; 4 Adam steps, so the weights drift apart too.
    fp32 = _train_steps(False, net, steps=4, batch=batch)
    bf16 = _train_steps(True, net, steps=4, batch=batch)
    assert fp32 != bf16  # autocast changed the arithmetic
    for s, (a, b) in enumerate(zip(fp32, bf16, strict=True)):
        for k in a:  # the total and each term: within 3%, or 0.02 absolute for terms near 0
            assert abs(a[k] - b[k]) <= max(0.03 * abs(a[k]), 0.02), (net, s, k, a[k], b[k])
    # On average the total is much closer than that (measured: 0.1-0.3%).
    rel = [abs(a["loss"] - b["loss"]) / a["loss"] for a, b in zip(fp32, bf16, strict=True)]
    assert sum(rel) / len(rel) < 0.01, rel


def test_cpu_bf16_only_where_the_cpu_computes_it_natively():
    # Emulated bf16 is slower than fp32 (1.9x on an AVX-512 CPU without BF16): cpu_bf16 asks for bf16 where it pays.
    from methods.trainer import Precision, cpu_has_bf16

    asked = Precision.choose("cpu", amp=True, channels_last=True, cpu_bf16=True)
    assert asked.amp == cpu_has_bf16() and asked.channels_last  # channels_last pays in fp32 too (0.7x the time)
    assert asked.name == ("bf16" if cpu_has_bf16() else "fp32")
    plain = Precision.choose("cpu", amp=True, channels_last=True, cpu_bf16=False)
    assert not plain.amp and not plain.channels_last
