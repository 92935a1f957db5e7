"""Data augmentation on the device, inside the jitted train step: random translation, horizontal flips, cutout.

Every random choice about a training example is a pure function of ``(seed, step, example index)``
(:func:`example_keys`): the global example index, not the example's place in a batch or on a device, keys it. So a
global batch is augmented identically on 1, 2 or 8 devices, under ``pmap`` or ``jit``, in micro-batches or not, and
a resumed run draws exactly what a straight one drew. Evaluation never augments (test-time flip is an evaluation
option of :mod:`harness.steps`, not an augmentation).

Images stay uint8 (or whatever the data holds) here: shifts and cutout fill with 0 (black, the background of
the MNIST-format datasets), flips only move pixels.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

# Datasets whose classes look the same mirrored (clothes): ``augment_flip=auto`` flips these only. Digits and
# characters change meaning (or become non-characters) when mirrored.
FLIP_SAFE = ("fashion_mnist",)

# What an example's key is folded with for each use, so that the uses draw independent numbers.
AUGMENT_STREAM, DROPOUT_STREAM = 0, 1


@dataclasses.dataclass(frozen=True)
class Augment:
    """What the train step does to each training image: shift by up to ``translate`` pixels each way (pad with 0
    and crop), mirror half of them left-right (``flip``), zero a ``cutout``×``cutout`` square at a random place
    (it may reach past the border). All zero/False: the image is left as it is."""

    translate: int = 0
    flip: bool = False
    cutout: int = 0

    @property
    def active(self) -> bool:
        return bool(self.translate or self.flip or self.cutout)

    @classmethod
    def from_config(cls, config) -> Augment:
        """The augmentation of ``config`` (``augment_flip=auto``: on for the datasets of :data:`FLIP_SAFE`)."""
        flip = config.augment_flip == "yes" or (config.augment_flip == "auto" and config.dataset in FLIP_SAFE)
        return cls(translate=config.augment_translate, flip=flip, cutout=config.augment_cutout)


def example_keys(seed: int, step: jax.Array, indices: jax.Array, stream: int) -> jax.Array:
    """One PRNG key per example of a batch: ``fold_in(fold_in(fold_in(key(seed), step), index), stream)``, a pure
    function of the seed, the train step and the global example index (padding, index -1, gets a key too)."""
    base = jax.random.fold_in(jax.random.key(seed), step)
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(base, i), stream))(indices.astype(jnp.uint32))


def flip_horizontal(images: jax.Array) -> jax.Array:
    """Mirrors images ``[N, H, W, C]`` left-right."""
    return images[:, :, ::-1, :]


def _translate(image: jax.Array, key: jax.Array, pixels: int) -> jax.Array:
    padded = jnp.pad(image, ((pixels, pixels), (pixels, pixels), (0, 0)))
    dy, dx = jax.random.randint(key, (2,), 0, 2 * pixels + 1)
    return jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)


def _cutout(image: jax.Array, key: jax.Array, size: int) -> jax.Array:
    h, w, _ = image.shape
    cy, cx = jax.random.randint(key, (2,), 0, jnp.array([h, w]))
    top, left = cy - size // 2, cx - size // 2
    rows, cols = jnp.arange(h)[:, None, None], jnp.arange(w)[None, :, None]
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return jnp.where(inside, jnp.zeros((), image.dtype), image)


def _one(image: jax.Array, key: jax.Array, aug: Augment) -> jax.Array:
    k_shift, k_flip, k_cut = jax.random.split(key, 3)
    if aug.translate:
        image = _translate(image, k_shift, aug.translate)
    if aug.flip:
        image = jnp.where(jax.random.bernoulli(k_flip), image[:, ::-1, :], image)
    if aug.cutout:
        image = _cutout(image, k_cut, aug.cutout)
    return image


def augment(images: jax.Array, keys: jax.Array, aug: Augment) -> jax.Array:
    """``images`` [N, H, W, C] augmented as ``aug`` says, example ``n`` by its key ``keys[n]`` (from
    :func:`example_keys` with :data:`AUGMENT_STREAM`); unchanged when ``aug`` is not active."""
    if not aug.active:
        return images
    return jax.vmap(lambda image, key: _one(image, key, aug))(images, keys)
