"""Every registered method builds and runs; the registry, networks and augmentations behave."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from methods import METHODS, TrainSet, get_method
from methods.augment import color_jitter, random_grayscale, resized_crop_flip, rotations, simclr_augment
from methods.networks import build_encoder


def small_digits(n: int = 48) -> TrainSet:
    """n real 8x8 digits: class 0 unlabeled, a few labeled normal, the last 6 labeled anomalies (class 1)."""
    d = load_digits()
    x = torch.tensor(np.round(d.images * 255 / 16), dtype=torch.uint8)[:, None]
    idx = np.concatenate([np.where(d.target == 0)[0][: n - 6], np.where(d.target == 1)[0][:6]])
    kind = torch.zeros(n, dtype=torch.int8)
    kind[:4] = TrainSet.NORMAL
    kind[-6:] = TrainSet.ANOMALY
    return TrainSet(x[idx], kind)


def build(cls, profile: str, **overrides):
    """As the runner does: Config defaults <- profile <- overrides, all plain JSON values."""
    params = {**dataclasses.asdict(cls.Config()), **cls.profiles[profile], **overrides}
    return cls(cls.Config(**params), torch.device("cpu"), seed=0)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_config_is_plain_data(name):
    cls = METHODS[name]
    assert cls.name == name
    assert set(cls.profiles) >= {"quick", "paper"}
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    for profile, overrides in cls.profiles.items():
        assert set(overrides) <= fields, f"profile {profile} sets unknown fields"
    values = dataclasses.asdict(cls.Config())
    assert all(isinstance(v, (str, int, float, bool)) for v in values.values())
    assert json.loads(json.dumps(values)) == values  # hashable as canonical JSON
    with pytest.raises(dataclasses.FrozenInstanceError):
        cls.Config().epochs = 3


@pytest.mark.parametrize("name,profile", [(n, p) for n in sorted(METHODS) for p in METHODS[n].profiles])
def test_every_method_fits_one_epoch_and_scores(name, profile):
    cls = METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    overrides = ({"epochs": 1} if "epochs" in fields else {}) | ({"net": "cnn_small"} if "net" in fields else {})
    method = build(cls, profile, **overrides)
    train = small_digits()
    logs = []
    summary = method.fit(train, on_epoch=lambda epoch, metrics: logs.append((epoch, metrics)))
    assert [e for e, _ in logs] == [1] and isinstance(logs[0][1]["loss"], float)
    assert summary["epochs"] == 1 and np.isfinite(summary["final_loss"])
    scores = method.score(train.images[:10])
    assert isinstance(scores, np.ndarray) and scores.shape == (10,) and scores.dtype.kind == "f"
    assert np.isfinite(scores).all()


def test_unknown_method_names_the_known_ones():
    assert get_method("hscl") is METHODS["hscl"]
    with pytest.raises(ValueError, match=r"unknown method 'nope'; known methods: .*hscl"):
        get_method("nope")


def test_trainset_checks_its_tensors():
    with pytest.raises(ValueError, match="uint8"):
        TrainSet(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.int8))
    with pytest.raises(ValueError, match="kind"):
        TrainSet(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(3, dtype=torch.int8))


# ---- networks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("net,shape,dim", [("cnn_small", (2, 1, 8, 8), 64), ("cnn_small", (2, 3, 32, 32), 64),
                                           ("resnet18", (2, 3, 32, 32), 512), ("resnet18", (2, 1, 8, 8), 512)])
def test_encoders_give_feature_vectors(net, shape, dim):
    encoder, feature_dim = build_encoder(net, shape[1])
    assert feature_dim == dim
    assert encoder(torch.randn(shape)).shape == (shape[0], dim)


def test_unknown_net_is_refused():
    with pytest.raises(ValueError, match="unknown net 'vgg'; known nets: cnn_small, resnet18"):
        build_encoder("vgg", 3)


# ---- augmentations --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 1, 8, 8), (16, 3, 32, 32), (4, 1, 28, 28)])
def test_simclr_augment_keeps_shape_and_makes_floats(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    out = simclr_augment(x, generator=g)
    assert out.shape == shape and out.dtype == torch.float32
    assert out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6  # normalised [0, 1] -> [-1, 1]
    # Same generator state -> same views; the next call draws new ones.
    assert torch.equal(out, simclr_augment(x, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(out, simclr_augment(x, generator=g))


def test_crops_are_drawn_per_sample():
    # One image repeated 32 times: a batched op with per-sample parameters gives 32 different crops.
    x = torch.rand(1, 3, 32, 32).expand(32, -1, -1, -1).contiguous()
    out = resized_crop_flip(x, scale=(0.08, 1.0), generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert len({tuple(o.flatten()[:20].tolist()) for o in out}) == 32
    # scale (1, 1) with ratio 1 and no flip is the identity.
    same = resized_crop_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    assert torch.allclose(same, x, atol=1e-5)
    # flip_p = 1 at full scale is a horizontal mirror.
    assert torch.allclose(resized_crop_flip(x, (1.0, 1.0), (1.0, 1.0), flip_p=1.0), x.flip(3), atol=1e-5)


def test_color_ops_stay_in_range_and_skip_gray_images():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(64, 3, 16, 16)
    jittered = color_jitter(rgb, strength=0.4, p=1.0, generator=g)
    assert jittered.shape == rgb.shape and jittered.min() >= 0 and jittered.max() <= 1
    assert not torch.allclose(jittered[0] - rgb[0], jittered[1] - rgb[1])  # per-sample factors
    gray = random_grayscale(rgb, p=1.0, generator=g)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    assert torch.equal(color_jitter(rgb, p=0.0, generator=g), rgb)
    one = torch.rand(8, 1, 8, 8)
    assert torch.equal(random_grayscale(one, p=1.0, generator=g), one)
    assert color_jitter(one, p=1.0, generator=g).shape == one.shape  # brightness/contrast only


def test_rotation_shifts():
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    r = rotations(x, 4)
    assert r.shape == (20, 3, 8, 8) and r.dtype == torch.uint8
    assert torch.equal(r[:5], x)  # k = 0 first
    for k in range(4):  # block k turned by a further (4 - k) * 90 degrees: 4 x 90 in all = identity
        assert torch.equal(torch.rot90(r[5 * k: 5 * (k + 1)], 4 - k, dims=(2, 3)), x)
    assert not torch.equal(r[5:10], x)
    assert torch.equal(rotations(x, 1), x)
    with pytest.raises(ValueError, match="square"):
        rotations(torch.zeros(2, 1, 8, 6), 4)
