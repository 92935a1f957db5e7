"""Augmentation on the device: a pure function of (seed, step, example index); shifts, flips and cutout do what
they say; auto flips clothes only."""

import jax
import numpy as np
import pytest
from helpers import make_images

from harness import augment
from harness import config as config_lib

EVERYTHING = augment.Augment(translate=2, flip=True, cutout=6)


def _augmented(indices, step=3, seed=0, aug=EVERYTHING, images=None):
    indices = np.asarray(indices, np.int32)
    if images is None:
        images = make_images(indices % 10, seed=1)
    keys = augment.example_keys(seed, step, indices, augment.AUGMENT_STREAM)
    return np.asarray(jax.jit(lambda x, k: augment.augment(x, k, aug))(images, keys))


def test_an_example_is_augmented_by_seed_step_and_index_wherever_it_sits_in_the_batch():
    pool = make_images(np.arange(40) % 10, seed=1)
    batch = np.array([5, 9, 2, 31], np.int32)
    first = _augmented(batch, images=pool[batch])
    again = _augmented(batch, images=pool[batch])
    np.testing.assert_array_equal(first, again)
    other_order = np.array([31, 2, 17, 5], np.int32)  # another batch holding three of the same examples
    moved = _augmented(other_order, images=pool[other_order])
    for i, j in ((0, 3), (2, 1), (3, 0)):
        np.testing.assert_array_equal(first[i], moved[j])
    assert not np.array_equal(first, pool[batch])  # it did something


@pytest.mark.parametrize("change", ["step", "seed"])
def test_another_step_or_seed_draws_other_augmentations(change):
    indices = np.arange(16)
    base = _augmented(indices)
    other = _augmented(indices, **{change: 4 if change == "step" else 1})
    differ = sum(not np.array_equal(a, b) for a, b in zip(base, other, strict=True))
    assert differ >= 12, differ


def test_the_keys_depend_on_the_stream():
    indices = np.arange(4, dtype=np.int32)
    a = augment.example_keys(0, 1, indices, augment.AUGMENT_STREAM)
    b = augment.example_keys(0, 1, indices, augment.DROPOUT_STREAM)
    assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(b))


def test_translation_moves_the_image_by_at_most_n_pixels_each_way_filling_with_zero():
    n = 200
    images = np.zeros((n, 28, 28, 1), np.uint8)
    images[:, 14, 10, 0] = 255  # one bright pixel
    out = _augmented(np.arange(n), aug=augment.Augment(translate=2), images=images)
    offsets = set()
    for image in out:
        (ys, xs, _) = np.nonzero(image)
        assert len(ys) == 1 and image.sum() == 255  # moved, not blurred, nothing else lit
        offsets.add((int(ys[0]) - 14, int(xs[0]) - 10))
    assert offsets == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}  # every shift, none larger


def test_flip_mirrors_about_half_the_images():
    n = 200
    images = make_images(np.arange(n) % 10)
    out = _augmented(np.arange(n), aug=augment.Augment(flip=True), images=images)
    mirrored = np.asarray(augment.flip_horizontal(images))
    flipped = [np.array_equal(o, m) for o, m in zip(out, mirrored, strict=True)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0.35 < np.mean(flipped) < 0.65


def test_cutout_zeroes_one_square_of_the_given_side_cut_by_the_border():
    n = 100
    images = np.full((n, 28, 28, 1), 255, np.uint8)
    out = _augmented(np.arange(n), aug=augment.Augment(cutout=6), images=images)
    whole = 0
    for image in out:
        ys, xs = np.nonzero(image[..., 0] == 0)
        assert len(ys) > 0
        box = (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        assert box[0] <= 6 and box[1] <= 6 and len(ys) == box[0] * box[1]  # one rectangle, at most 6×6
        whole += box == (6, 6)
    assert whole > n // 2  # mostly inside the picture


def test_nothing_asked_leaves_the_images_as_they_are():
    images = make_images(np.arange(4))
    assert not augment.Augment().active
    assert augment.augment(images, None, augment.Augment()) is images


@pytest.mark.parametrize(
    ("dataset", "choice", "flip"),
    [
        ("fashion_mnist", "auto", True),
        ("mnist", "auto", False),
        ("mnist", "yes", True),
        ("fashion_mnist", "no", False),
    ],
)
def test_auto_flips_clothes_not_digits(dataset, choice, flip):
    c = config_lib.base_config()
    c.update(dataset=dataset, augment_flip=choice, augment_translate=2, augment_cutout=8)
    assert augment.Augment.from_config(c) == augment.Augment(translate=2, flip=flip, cutout=8)


def test_the_defaults_augment_nothing():
    assert not augment.Augment.from_config(config_lib.base_config()).active
