"""E7 augmentations and model-side regularizers: random per sample, reproducible from the step's generator."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from bilinear.augment import AUGMENT_KEYS, build_perturbations, perlin_fields
from bilinear.errors import ConfigError
from bilinear.models.image import ImageClassifier

SHAPE = (1, 28, 28)
SETTINGS = {
    "rotation": {"rotation": 30.0},
    "translation": {"translation": 4.0},
    "blur": {"blur": 1.5},
    "salt_pepper": {"salt_pepper": 0.1},
    "perlin": {"perlin": 0.3},
}


def perturb(augment: dict, x: torch.Tensor, seed: int, noise_std: float = 0.0) -> torch.Tensor:
    cfg = OmegaConf.create({"noise_std": noise_std, "augment": augment})
    gen = torch.Generator().manual_seed(seed)
    for p in build_perturbations(cfg, SHAPE):
        x = p(x, gen)
    return x


def digit_like(n: int) -> torch.Tensor:
    """n copies of one image with an off-centre bar and a blob, so rotation and translation both show."""
    img = torch.zeros(28, 28)
    img[5:22, 9:12] = 1.0
    img[16:20, 14:22] = 0.7
    return img.flatten().repeat(n, 1)


@pytest.mark.parametrize("name", [*SETTINGS, "gaussian"])
def test_two_copies_of_one_image_come_out_different(name):
    x = digit_like(2)
    out = perturb({}, x, 0, noise_std=0.3) if name == "gaussian" else perturb(SETTINGS[name], x, 0)
    assert out.shape == x.shape
    assert not torch.allclose(out[0], out[1], atol=1e-4), f"{name} drew one transform for the whole batch"
    assert not torch.allclose(out[0], x[0], atol=1e-4)


@pytest.mark.parametrize("name", SETTINGS)
def test_same_generator_seed_same_output(name):
    x = digit_like(8)
    a, b, c = (perturb(SETTINGS[name], x, s) for s in (3, 3, 4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_zero_settings_build_nothing_and_order_ends_with_noise():
    cfg = OmegaConf.create({"noise_std": 0.0, "augment": {k: 0 for k in AUGMENT_KEYS}})
    assert build_perturbations(cfg, SHAPE) == []
    cfg = OmegaConf.create({"noise_std": 0.2, "augment": {"salt_pepper": 0.2}})
    assert len(build_perturbations(cfg, SHAPE)) == 2


def test_translation_moves_mass_and_rotation_keeps_it_roughly():
    x = digit_like(64)
    moved = perturb({"translation": 3.0}, x, 1)
    assert torch.allclose(moved.sum(1), x.sum(1), rtol=0.05)  # the shape stays inside the frame
    rot = perturb({"rotation": 20.0}, x, 1)
    assert torch.allclose(rot.sum(1), x.sum(1), rtol=0.1)


def test_salt_and_pepper_fraction_and_values():
    x = torch.full((16, 784), 0.5)
    out = perturb({"salt_pepper": 0.2}, x, 0)
    changed = out != 0.5
    assert 0.15 < changed.float().mean() < 0.25
    assert set(out[changed].unique().tolist()) <= {0.0, 1.0}


def test_perlin_fields_are_smooth_and_independent():
    f = perlin_fields(4, 28, 28, 4, torch.Generator().manual_seed(0), "cpu", torch.float32)
    assert f.abs().max() <= 1.5
    # spatially correlated: for white noise the mean |neighbour difference| is 2/sqrt(pi) ~ 1.13 std
    assert (f[:, :, 1:] - f[:, :, :-1]).abs().mean() < 0.5 * f.std()
    assert not torch.allclose(f[0], f[1])


@pytest.mark.parametrize("bad, needle", [({"rotaton": 3.0}, "rotaton"), ({"blur": -1.0}, "blur"),
                                         ({"salt_pepper": 2.0}, "salt_pepper"), ({"perlin": 0.1, "perlin_cells": 0}, "perlin_cells")])
def test_bad_augment_config(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        build_perturbations(OmegaConf.create({"noise_std": 0.0, "augment": bad}), SHAPE)


def test_hidden_noise_and_dropout_only_while_training_and_from_the_generator():
    torch.manual_seed(0)
    model = ImageClassifier(784, 16, 10, hidden_noise=0.5, dropout=0.3)
    x = digit_like(2)
    model.train()
    a = model(x, generator=torch.Generator().manual_seed(1))
    b = model(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])  # per sample
    model.eval()
    plain = ImageClassifier(784, 16, 10)
    plain.load_state_dict(model.state_dict())
    assert torch.allclose(model(x), plain.eval()(x))
    with pytest.raises(ConfigError):
        ImageClassifier(784, 16, 10, dropout=1.0)
