"""The process and its devices: ``jax.distributed`` start-up, the compilation cache, process 0 and barriers, device
selection and the free memory of a device.

Several processes (``jax.distributed``, see :func:`initialize_distributed`) form one run: the mesh spans every
process's devices (:func:`select_devices`); only process 0 writes logs and reports (:func:`is_main_process`).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from harness import settings
from harness.errors import ConfigError


def enable_compilation_cache(announce: Callable[[str], Any] | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache in ``HARNESS_COMPILATION_CACHE`` (default
    ``~/.cache/harness/jax``; ``off`` disables) and returns the dir (None: off, or the dir cannot be made).

    For the entry points (``harness train``, ``train_and_evaluate``): ``announce`` gets one line saying so the first
    time this process turns it on."""
    directory = settings.load().compilation_cache
    if directory is None:
        return None
    problem = settings.dir_problem(directory)
    try:
        if problem is None:
            directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        problem = f"cannot be made ({e.strerror})"
    if problem is not None:  # an unusable cache only costs compile time: say so once, go on without
        settings.cache_unusable("HARNESS_COMPILATION_CACHE", directory, problem, "compiling without a cache")
        return None
    already = jax.config.jax_compilation_cache_dir == str(directory)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if announce is not None and not already:
        announce(f"compilation cache: {settings.display_path(directory)} (HARNESS_COMPILATION_CACHE=off to disable)")
    return str(directory)


def initialize_distributed(enabled: bool | None = None) -> bool:
    """Joins a multi-process run through ``jax.distributed.initialize`` when ``enabled``; None (a config that leaves
    ``distributed`` unset) means ``HARNESS_DISTRIBUTED``, else off. An explicit True or False wins over the variable.

    With no more settings JAX finds the cluster itself (Cloud TPU, SLURM, Open MPI, Kubernetes); elsewhere
    ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` name it.
    ``HARNESS_DISTRIBUTED_TIMEOUT`` bounds the wait for the other processes (seconds, default 300). Must run before
    anything asks JAX for devices. Returns whether this process is part of a multi-process run.
    """
    known = settings.load()
    if not (known.distributed if enabled is None else enabled):
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs: dict[str, Any] = {}
    for key, env in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
        value = os.environ.get(env, "").strip()
        if value:
            if not value.isdigit():
                raise ConfigError(f"{env}={value!r}: expected a non-negative integer")
            kwargs[key] = int(value)
    timeout = known.distributed_timeout
    address = os.environ.get("JAX_COORDINATOR_ADDRESS", "").strip()
    if address and kwargs.get("process_id"):
        _wait_for_coordinator(address, timeout)  # JAX itself aborts the process when it cannot register
    try:
        jax.distributed.initialize(initialization_timeout=timeout, **kwargs)
    except (ValueError, TypeError, RuntimeError) as e:
        first = " ".join(str(e).split())[:300]
        raise ConfigError(
            f"cannot join the distributed run ({first}); set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES "
            "and JAX_PROCESS_ID, or run under a scheduler JAX detects (Cloud TPU, SLURM, Open MPI, Kubernetes)"
        ) from None
    return True


def _wait_for_coordinator(address: str, timeout: float) -> None:
    """Waits until process 0's coordinator at ``host:port`` accepts connections; one-line error after ``timeout``."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"JAX_COORDINATOR_ADDRESS={address!r}: expected host:port")
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"no coordinator answers at {address} after {timeout:.0f} s ({e.strerror or e}); start process 0 "
                    "there, or raise HARNESS_DISTRIBUTED_TIMEOUT"
                ) from None
            time.sleep(0.25)


def is_main_process() -> bool:
    """True on the process that writes logs, metrics and reports (process 0; the only one when single-process)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (nothing to wait for in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def select_devices(num_devices: int = 0) -> list:
    """The first ``num_devices`` local devices (0 = all); in a multi-process run every process's devices."""
    if jax.process_count() > 1:
        if num_devices not in (0, jax.device_count()):
            raise ConfigError(
                f"config.num_devices={num_devices}: a multi-process run uses all {jax.device_count()} devices (use 0)"
            )
        return jax.devices()
    available = jax.local_devices()
    if num_devices > len(available):
        raise ConfigError(
            f"config.num_devices={num_devices}: only {len(available)} {available[0].platform} device(s) here"
        )
    return available[: num_devices or len(available)]


def is_abstract(devices: list) -> bool:
    """Whether ``devices`` are compile-only devices of a described slice (:mod:`harness.topology`), not ones this
    process can run on."""
    try:
        return devices[0] not in jax.devices(devices[0].platform)
    except RuntimeError:  # no such backend here
        return True


def chip_count(devices: list) -> int:
    """The chips ``devices`` sit on: distinct coordinates where devices have them (a TPU v2/v3 chip is two
    devices), else one chip per device."""
    coords = {tuple(d.coords) for d in devices if getattr(d, "coords", None) is not None}
    return len(coords) or len(devices)


def available_bytes(devices: list) -> int | None:
    """Free memory per device: what an accelerator reports (limit − in use), or for CPU devices the host's available
    memory shared among them; None when unknown."""
    local = [d for d in devices if d.process_index == jax.process_index()]
    if not local:
        return None
    stats = local[0].memory_stats() if hasattr(local[0], "memory_stats") else None  # only a local device says
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    if local[0].platform != "cpu":
        return None
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    except (OSError, ValueError):
        return None
    kib = int(meminfo.get("MemAvailable", "0 kB").split()[0])
    return kib * 1024 // len(local)
