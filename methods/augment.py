"""Batched image augmentations that run on the device, over whole batches.

SimCLR's augmentations (Chen et al. 2020, as used by CSI and HSCL Sec. 4.2): Inception crop
(random resized crop), horizontal flip, colour jitter, random grayscale and (CADet, SimCLRv2) Gaussian
blur, chained in `simclr_chain`; CSI's shifting transformation, rotation by k * 90 degrees; CADet's
evaluation views. Every function takes a batch (N, C, H, W) and draws
its random parameters per sample from a `torch.Generator`, as tensors: there is no loop over
images (airbench style), only a few tensor ops per batch.

Plain torch rather than kornia: measured on 1 CPU thread, the pipeline below (crop + flip as one
`grid_sample`, jitter, grayscale) took 0.3 ms for 256 8x8 digits and 10 ms for 256 32x32x3
images; kornia 0.9's `AugmentationSequential` with the same four ops took 4-5 ms and 25-27 ms.
On the quick profile's tiny images kornia's per-call overhead alone would be about a fifth of the
training time, and plain torch draws from our seeded `torch.Generator`, so runs repeat exactly.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale uses.
_LUMA = (0.299, 0.587, 0.114)


def _uniform(n: int, low: float, high: float, g: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) in [0, 255] -> float32 in [0, 1]."""
    return images.float().div_(255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> roughly [-1, 1]. One fixed mean/std for every dataset: config stays data-free, and
    the networks start with conv + BatchNorm, which re-centres each channel anyway."""
    return (x - 0.5) / 0.5


def resized_crop_flip(
    x: torch.Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Inception crop + horizontal flip, with per-sample parameters, as ONE batched grid_sample.

    x: float (N, C, H, W). Each sample gets a crop covering a fraction `scale` of the image area
    with aspect ratio in `ratio` (log-uniform), resized back to (H, W) bilinearly, then flipped
    with probability flip_p. Unlike torchvision, a crop larger than the image is clamped to the
    image side instead of re-drawn up to 10 times (a loop we cannot batch).
    """
    n, dev = x.shape[0], x.device
    area = _uniform(n, scale[0], scale[1], generator, dev)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, dev)
    r = torch.exp(log_r)
    # Crop width / height as fractions of the image side (affine_grid works in [-1, 1] coordinates).
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator, device=dev) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=generator, device=dev) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=generator, device=dev) < flip_p, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)  # (N, 2, 3): output -> input coordinates
    theta[:, 0, 0] = w * flip  # a negative x-scale mirrors the crop: the flip costs nothing
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def color_jitter(
    x: torch.Tensor,
    strength: float = 0.4,
    p: float = 0.8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SimCLR colour jitter: brightness, contrast, saturation by factors in [1-s, 1+s], hue by up
    to s/4 of a turn (CSI's 0.4, 0.4, 0.4, 0.1), applied to each sample with probability p.

    x: float (N, C, H, W) in [0, 1]. Brightness and contrast also apply to 1-channel images; the
    colour ops (saturation, hue) need 3 channels and are skipped for C = 1. Ops run in a fixed
    order (torchvision shuffles it per call), which keeps this one pass of tensor ops.
    """
    n, c, dev = x.shape[0], x.shape[1], x.device

    def factor() -> torch.Tensor:  # (N, 1, 1, 1), one factor per sample
        return _uniform(n, 1 - strength, 1 + strength, generator, dev).view(n, 1, 1, 1)

    out = (x * factor()).clamp(0, 1)  # brightness
    mean = (_gray(out) if c == 3 else out).mean(dim=(1, 2, 3), keepdim=True)
    out = (mean + factor() * (out - mean)).clamp(0, 1)  # contrast: blend with the mean grey level
    if c == 3:
        gray = _gray(out)
        out = (gray + factor() * (out - gray)).clamp(0, 1)  # saturation: blend with own grayscale
        # Hue: rotate the chroma plane of YIQ by an angle in [-s/4, s/4] turns. A linear stand-in
        # for torchvision's HSV hue shift that needs no per-pixel branches.
        angle = _uniform(n, -strength / 4, strength / 4, generator, dev) * 2 * math.pi
        out = _hue_rotate(out, angle).clamp(0, 1)
    # Jitter every sample, keep the result for a random subset (cheaper than gathering a subset).
    apply = torch.rand(n, generator=generator, device=dev) < p
    return torch.where(apply.view(n, 1, 1, 1), out, x)


@functools.lru_cache(maxsize=8)
def _yiq(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(RGB -> YIQ, YIQ -> RGB) 3x3 matrices, copied to each device once, not once per batch."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          dtype=torch.float64)
    return to_yiq.to(device, dtype), torch.linalg.inv(to_yiq).to(device, dtype)


def _hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """x (N, 3, H, W), angle (N,) radians -> hue-rotated x, via one (N, 3, 3) colour matrix each."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(angle.shape[0], 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    to_yiq, to_rgb = _yiq(x.device, x.dtype)
    m = to_rgb @ rot @ to_yiq  # (N, 3, 3)
    return torch.einsum("nij,njhw->nihw", m, x)


def random_grayscale(x: torch.Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each 3-channel sample by its grayscale (kept 3 channels) with probability p.
    1-channel images are already gray and come back unchanged."""
    if x.shape[1] != 3:
        return x
    mask = (torch.rand(x.shape[0], generator=generator, device=x.device) < p).view(-1, 1, 1, 1)
    return torch.where(mask, _gray(x).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """SimCLR's blur: with probability p a Gaussian of sigma ~ U[0.1, 2] pixels, kernel 10 % of the image
    side (odd, >= 3), as one grouped separable convolution over the batch. x float (N, C, H, W)."""
    n, c, h, w = x.shape
    k = max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)
    if min(h, w) <= k // 2:  # too small to pad by reflection: nothing to blur
        return x
    dev = x.device
    sigma = torch.rand(n, generator=generator, device=dev) * 1.9 + 0.1
    r = torch.arange(k, device=dev, dtype=x.dtype) - k // 2
    kern = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N * C, k)
    y = F.pad(x.reshape(1, n * c, h, w), (k // 2,) * 4, mode="reflect")
    y = F.conv2d(y, kern.view(n * c, 1, k, 1), groups=n * c)  # vertical pass
    y = F.conv2d(y, kern.view(n * c, 1, 1, k), groups=n * c).view(n, c, h, w)  # horizontal pass
    apply = torch.rand(n, generator=generator, device=dev) < p
    return torch.where(apply.view(n, 1, 1, 1), y, x)


def simclr_chain(x: torch.Tensor, crop_scale_min: float, jitter: float, jitter_p: float, gray_p: float,
                 blur_p: float = 0.0, flip_p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """SimCLR's transformations of float [0, 1] rows (N, C, H, W), in this order and each drawn per row: Inception
    crop + horizontal flip (flip_p), colour jitter, grayscale, Gaussian blur (only when blur_p > 0: no draws
    otherwise) -> normalised float (N, C, H, W)."""
    x = resized_crop_flip(x, scale=(crop_scale_min, 1.0), flip_p=flip_p, generator=generator)
    x = color_jitter(x, strength=jitter, p=jitter_p, generator=generator)
    x = random_grayscale(x, p=gray_p, generator=generator)
    if blur_p > 0:
        x = gaussian_blur(x, blur_p, generator)
    return normalize(x)


def simclr_views(images: torch.Tensor, n_views: int = 2, crop_scale_min: float = 0.08, jitter: float = 0.4,
                 jitter_p: float = 0.8, gray_p: float = 0.2, blur_p: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """SimCLR's training batch (HSCL Sec. 4.2, CADet's T_train): uint8 (B, C, H, W) -> normalised float
    (n_views * B, C, H, W), row v * B + i = view v of image i ([view 0 of all; view 1 of all; ...])."""
    x = to_float(images).repeat(n_views, 1, 1, 1)
    return simclr_chain(x, crop_scale_min, jitter, jitter_p, gray_p, blur_p, generator=generator)


def simclr_augment(images: torch.Tensor, crop_scale_min: float = 0.08, jitter: float = 0.4, jitter_p: float = 0.8,
                   gray_p: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalised float (N, C, H, W): one SimCLR view per image."""
    return simclr_chain(to_float(images), crop_scale_min, jitter, jitter_p, gray_p, generator=generator)


def rotations(x: torch.Tensor, n: int = 4) -> torch.Tensor:
    """CSI's shifting transformation: (B, C, H, W) -> (n * B, C, H, W), block k rotated by k * 90
    degrees (k = 0 first, so the first B rows are x itself). Needs square images."""
    if n > 1 and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation shifts need square images, got {tuple(x.shape[-2:])}")
    return torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(n)])


def shifted_views(
    images: torch.Tensor,
    n_views: int = 2,
    n_rot: int = 4,
    crop_scale_min: float = 0.08,
    jitter: float = 0.4,
    jitter_p: float = 0.8,
    gray_p: float = 0.2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """CSI's training batch: uint8 (B, C, H, W) -> normalised float (n_rot * n_views * B, C, H, W),
    row k * (n_views * B) + v * B + i = view v of image i, rotated by k * 90 degrees.

    Order as in CSI: flip, rotate, then crop / jitter / grayscale, each drawn per row. The flip comes
    before the rotation because a mirrored image turned by 90 degrees is the mirror of that image
    turned by 270: flipping after rotating would make 90 and 270 indistinguishable to a rotation
    classifier. n_rot = 1 gives plain SimCLR views.
    """
    x = to_float(images).repeat(n_views, 1, 1, 1)  # (V * B, C, H, W)
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    x = rotations(x, n_rot)  # (R * V * B, C, H, W)
    return simclr_chain(x, crop_scale_min, jitter, jitter_p, gray_p, flip_p=0.0, generator=generator)


def eval_views(x: torch.Tensor, n_trs: int, scale: float, flip: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """CADet's T_eval (Sec. 5.1): float [0, 1] (B, C, H, W) -> normalised (n_trs * B, C, H, W), row t * B + i =
    view t of image i: a crop of `scale` of the area (random aspect ratio and position), resized back,
    flipped with probability 0.5."""
    v = x.repeat(n_trs, 1, 1, 1)
    v = resized_crop_flip(v, scale=(scale, scale), flip_p=0.5 if flip else 0.0, generator=generator)
    return normalize(v)


def as_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images -> float [0, 1] (adversarial images stay unquantised)."""
    return to_float(images) if images.dtype == torch.uint8 else images.float().clamp(0, 1)
