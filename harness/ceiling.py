"""The measured ceiling: what this machine demonstrably reaches, beside the datasheet of :mod:`harness.peaks`.

A short calibration, run once per process on the first local device: the best of several large square matmuls per
dtype (float32 and bfloat16, at XLA's default precision, as the models' own matmuls) and the best of several
passes of ``x + 1`` over a large donated array (read and written in place) for memory bandwidth: about 2–3 s.
Ledger rows carry it in their fingerprint, and each bench row divides its achieved FLOP/s by it
(``ceiling_fraction``) beside its MFU against the datasheet. On a CPU one device's program uses every core, so the
ceiling is the whole CPU's (as its datasheet peak is); on accelerators it is per device. On a machine shared with
other work it is what was reached then: a row can exceed it. Where :func:`measured` gives None (a test may patch
it so), the fingerprint says ``"ceiling": null`` and rows "n/a".
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

DTYPES = ("float32", "bfloat16")
SIZES = {"cpu": (2048, 2**25)}  # (matmul n, copy elements): 17 GFLOP per matmul, 128 MiB copied
ACCELERATOR_SIZES = (8192, 2**28)  # 1.1 TFLOP per matmul, 1 GiB: long enough to hide dispatch on a GPU or TPU
MATMUL_REPEATS, COPY_REPEATS = 3, 5  # at least; more while the budget lasts (the best of more samples is less
BUDGET_SECONDS, MAX_REPEATS = 0.75, 50  # disturbed by other work on a shared machine)


def _best(fn: Callable, args: tuple, repeats: int, clock: Callable[[], float], chain: bool = False) -> float:
    """The shortest of at least ``repeats`` timed calls (more until ``BUDGET_SECONDS`` of them, at most
    ``MAX_REPEATS``) after one untimed call (compilation); ``chain``: each call's output is the next call's argument
    (a donated buffer cannot be used twice)."""
    out = jax.block_until_ready(fn(*args))
    times: list[float] = []
    while len(times) < repeats or (sum(times) < BUDGET_SECONDS and len(times) < MAX_REPEATS):
        args = (out,) if chain else args
        t0 = clock()
        out = jax.block_until_ready(fn(*args))
        times.append(clock() - t0)
    return max(min(times), 1e-9)


def calibrate(
    device=None,
    matmul_size: int | None = None,
    copy_elements: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """FLOP/s of the best ``n × n`` matmul per dtype and bytes/s of the best in-place copy on ``device``."""
    device = device or jax.local_devices()[0]
    n, m = SIZES.get(device.platform, ACCELERATOR_SIZES)
    n, m = matmul_size or n, copy_elements or m
    start = clock()
    result = {"device_kind": device.device_kind, "per": "cpu" if device.platform == "cpu" else "device"}
    matmul = jax.jit(jnp.matmul)
    for dtype in DTYPES:
        a = jax.device_put(jnp.ones((n, n), dtype), device)
        result[f"{dtype}_flops_per_sec"] = 2 * n**3 / _best(matmul, (a, a), MATMUL_REPEATS, clock)
        del a
    x = jax.device_put(jnp.zeros(m, jnp.float32), device)
    copy = jax.jit(lambda v: v + 1, donate_argnums=0)
    result["bytes_per_sec"] = 2 * x.nbytes / _best(copy, (x,), COPY_REPEATS, clock, chain=True)
    result.update(matmul_size=n, copy_bytes=2 * m * 4, seconds=clock() - start)
    return result


@functools.cache
def measured() -> dict | None:
    """:func:`calibrate` on the first local device, once per process."""
    return calibrate()


def flops(ceiling: dict | None, dtype: str, devices: int = 1) -> float | None:
    """The measured FLOP/s of ``dtype`` for ``devices`` devices (the whole CPU on a CPU), or None."""
    value = (ceiling or {}).get(f"{dtype}_flops_per_sec")
    if not value:
        return None
    return value * (1 if ceiling.get("per") == "cpu" else devices)


def bandwidth(ceiling: dict | None, devices: int = 1) -> float | None:
    """The measured copy bandwidth in bytes/s for ``devices`` devices (the whole CPU on a CPU), or None."""
    value = (ceiling or {}).get("bytes_per_sec")
    if not value:
        return None
    return value * (1 if ceiling.get("per") == "cpu" else devices)
