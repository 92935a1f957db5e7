"""The one module where devices appear: wraps the pure steps with ``pmap`` or ``jit`` + ``NamedSharding``.

Both strategies are data parallel and give the single-device result for the same global batch (a test guards
this: see the gradient-scale pitfall in DESIGN.md).

- ``pmap`` (default): state and data carry a leading device axis (one copy per device, placed once); each device
  takes its slice of the batch indices; gradients and metric sums are ``psum``-ed over the device axis.
- ``jit``: state and data are replicated global arrays on a 1-D ``Mesh``; the indices, and so the batch, are
  sharded along its ``devices`` axis; XLA inserts the collectives.

Several processes (``jax.distributed``, see :func:`initialize_distributed`) form one run: the mesh spans every
process's devices, every array is a global ``jax.Array`` assembled from each process's own shards
(``make_array_from_callback``: a process only ever touches the rows of its own devices), and collectives cross
processes (gloo on CPU, the interconnect on GPU/TPU).

Three ways to feed a train step: indices into device-resident data (``train_step``, the default), several such
steps in one dispatch (``train_steps``, indices [steps, batch]), or a batch built on the host and sent with each
step (``train_batch``, the host-pipeline baseline).
"""

from __future__ import annotations

import collections
import os
import socket
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from harness import settings, steps
from harness.errors import ConfigError

AXIS = "devices"
STRATEGIES = ("pmap", "jit")
# How each argument is laid out under jit: replicated, split along its first axis, or along its second.
REPL, SPLIT, SPLIT_1 = P(), P(AXIS), P(None, AXIS)


def enable_compilation_cache(announce: Callable[[str], Any] | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache in ``HARNESS_COMPILATION_CACHE`` (default
    ``~/.cache/harness/jax``; ``off`` disables) and returns the dir (None: off, or the dir cannot be made).

    For the entry points (``harness train``, ``train_and_evaluate``): ``announce`` gets one line saying so the first
    time this process turns it on."""
    directory = settings.load().compilation_cache
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # an unwritable cache dir only costs compile time
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


def needed_bytes(compiled) -> int | None:
    """Device memory one compiled program needs per device (XLA's estimate: arguments, outputs and temporaries,
    less donated buffers), or None where the backend does not say."""
    try:
        m = compiled.memory_analysis()
    except (AttributeError, NotImplementedError, jax.errors.JaxRuntimeError):
        return None
    m = m[0] if isinstance(m, list | tuple) else m
    if m is None:
        return None
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def available_bytes(devices: list) -> int | None:
    """Free memory per device: what an accelerator reports (limit − in use), or for CPU devices the host's available
    memory shared among them; None when unknown."""
    stats = devices[0].memory_stats() if hasattr(devices[0], "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    if devices[0].platform != "cpu":
        return None
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    except (OSError, ValueError):
        return None
    kib = int(meminfo.get("MemAvailable", "0 kB").split()[0])
    return kib * 1024 // len([d for d in devices if d.process_index == jax.process_index()])


def check_memory(compiled: list, devices: list) -> None:
    """Stops with one line, before the first step, when a compiled step needs more memory than a device has."""
    if jax.process_count() > 1:  # hosts may differ: a one-sided stop would leave the others waiting
        return
    needs = [n for n in (needed_bytes(c) for c in compiled) if n is not None]
    have = available_bytes(devices)
    if needs and have is not None and max(needs) > have:
        raise ConfigError(
            f"the train step needs {max(needs) / 2**30:.1f} GiB per device (XLA's estimate) but {devices[0].platform} "
            f"has {max(have, 0) / 2**30:.1f} GiB free per device: use a smaller config.batch_size (or model)"
        )


class Parallel:
    """Places state and data on devices and runs the compiled train/eval steps."""

    def __init__(self, kind: str, devices: list, graphdef, tx, micro_batches: int = 1):
        if kind not in STRATEGIES:
            raise ConfigError(f"config.parallel={kind!r}: allowed: {', '.join(STRATEGIES)}")
        self.kind = kind
        self.devices = list(devices)
        self.mesh = Mesh(np.array(self.devices), (AXIS,))
        self.traces: collections.Counter = collections.Counter()
        self._fns = {
            "train": self._wrap(
                "train", partial(steps.train_step, graphdef, tx, micro_batches=micro_batches), (REPL, REPL, SPLIT), True
            ),
            "train_steps": self._wrap(
                "train_steps",
                partial(steps.train_steps, graphdef, tx, micro_batches=micro_batches),
                (REPL, REPL, SPLIT_1),
                True,
            ),
            "train_batch": self._wrap(
                "train_batch", partial(steps.update, graphdef, tx, micro_batches=micro_batches), (REPL, SPLIT), True
            ),
            "eval": self._wrap("eval", partial(steps.eval_step, graphdef), (REPL, REPL, SPLIT), False),
            "predict": self._wrap(
                "predict",
                lambda params, images, reduce: steps.predict_probs(graphdef, params, images),
                (REPL, SPLIT),
                False,
                SPLIT,
            ),
        }

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def _sharding(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    def _wrap(self, name: str, fn, layout: tuple, donate_state: bool, out_layout: P | None = None):
        """``fn(*args, reduce=…)`` compiled for this strategy; ``layout`` gives each argument's jit sharding, and
        ``out_layout`` the output's (default: replicated; a donated state's new state and sums)."""
        reduce = partial(jax.lax.psum, axis_name=AXIS) if self.kind == "pmap" else steps.identity

        def traced(*args):
            self.traces[name] += 1  # runs once per trace, never per call
            return fn(*args, reduce=reduce)

        donate = (0,) if donate_state else ()
        if self.kind == "pmap":
            return jax.pmap(traced, axis_name=AXIS, devices=self.devices, donate_argnums=donate)
        out = (self._sharding(REPL), self._sharding(REPL)) if donate_state else self._sharding(out_layout or REPL)
        shardings = tuple(self._sharding(spec) for spec in layout)
        return jax.jit(traced, in_shardings=shardings, out_shardings=out, donate_argnums=donate)

    # ---- placement -----------------------------------------------------------------------------------------

    def _global(self, x: np.ndarray, spec: P) -> jax.Array:
        """The global array ``x`` laid out as ``spec``; this process fills only its own devices' shards."""
        return jax.make_array_from_callback(x.shape, self._sharding(spec), lambda index: x[index])

    def replicate(self, tree: Any) -> Any:
        """Places a host pytree (the same on every process) on every device (pmap: a leading device axis)."""
        if self.kind == "jit":
            return jax.tree.map(lambda x: self._global(np.asarray(x), REPL), tree)
        n = self.num_devices
        return jax.tree.map(lambda x: self._global(np.broadcast_to(np.asarray(x), (n, *np.shape(x))), SPLIT), tree)

    def unreplicate(self, tree: Any) -> Any:
        """One host copy (numpy) of a replicated pytree — never pmap's per-device copies."""
        if self.kind == "jit":
            return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), tree)
        return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)

    def _split(self, x: np.ndarray, axis: int) -> jax.Array:
        """Splits the global ``x`` along ``axis`` across the devices, in device order."""
        x = np.asarray(x)
        if self.kind == "jit":
            return self._global(x, SPLIT if axis == 0 else SPLIT_1)
        n = self.num_devices
        size = x.shape[axis] // n
        parts_shape = (n, *x.shape[:axis], size, *x.shape[axis + 1 :])

        def part(index: tuple) -> np.ndarray:  # pmap's [devices, …] layout, built only for the asked devices
            devices = range(*index[0].indices(n))
            return np.stack([np.take(x, range(d * size, (d + 1) * size), axis=axis) for d in devices])

        return jax.make_array_from_callback(parts_shape, self._sharding(SPLIT), part)

    def shard_indices(self, indices: np.ndarray) -> jax.Array:
        """Splits a global batch of indices ([batch], or [steps, batch]) across the devices."""
        return self._split(indices, indices.ndim - 1)

    def shard_batch(self, batch: dict) -> dict:
        """Splits a host batch (arrays with a leading batch axis) across the devices."""
        return {k: self._split(v, 0) for k, v in batch.items()}

    # ---- steps ---------------------------------------------------------------------------------------------

    def compile(self, state: Any, train_data: Any, eval_data: Any, indices: jax.Array, steps: int = 1) -> float:
        """Compiles the indexed train step (and, for ``steps`` > 1, the fused ``steps``-step program) and the eval
        step ahead of time for these shapes; returns the seconds it took. Later calls with other shapes fail loudly
        instead of silently recompiling."""
        start = time.perf_counter()
        if steps > 1:
            several = self.shard_indices(np.zeros((steps, indices.size), np.int32))  # [steps, global batch]
            self._fns["train_steps"] = self._fns["train_steps"].lower(state, train_data, several).compile()
        self._fns["train"] = self._fns["train"].lower(state, train_data, indices).compile()
        self._fns["eval"] = self._fns["eval"].lower(state.params, eval_data, indices).compile()
        check_memory(
            [self._fns[n] for n in ("train", "train_steps", "eval") if hasattr(self._fns[n], "memory_analysis")],
            self.devices,
        )
        return time.perf_counter() - start

    def lower(self, name: str, *args):
        """The lowered (not yet compiled) step ``name`` for these arguments (for AOT compiles and cost analysis)."""
        return self._fns[name].lower(*args)

    def train_step(self, state: Any, data: Any, indices: jax.Array) -> tuple[Any, Any]:
        """Runs one step; ``state`` is donated. Returns the new state and the device-resident metric sums."""
        return self._fns["train"](state, data, indices)

    def train_steps(self, state: Any, data: Any, indices: jax.Array) -> tuple[Any, Any]:
        """Runs ``indices.shape[0]`` steps in one dispatch (from :meth:`shard_indices` of [steps, batch])."""
        return self._fns["train_steps"](state, data, indices)

    def train_batch(self, state: Any, batch: dict) -> tuple[Any, Any]:
        """Runs one step on a host batch placed by :meth:`shard_batch`."""
        return self._fns["train_batch"](state, batch)

    def eval_step(self, params: Any, data: Any, indices: jax.Array) -> Any:
        """Metric sums of one eval batch (device-resident)."""
        return self._fns["eval"](params, data, indices)

    def predict(self, params: Any, images: np.ndarray) -> np.ndarray:
        """Class probabilities of host ``images`` (padded to a multiple of the device count; single-process)."""
        n, pad = len(images), -len(images) % self.num_devices
        padded = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)]) if pad else images
        probs = np.asarray(self._fns["predict"](params, self._split(padded, 0)))
        return probs.reshape(-1, probs.shape[-1])[:n]

    def metrics_to_host(self, sums: Any) -> dict:
        """Device metric sums → host floats (pmap's copies are equal after the psum: take the first)."""
        return {k: float(np.asarray(v.addressable_shards[0].data).reshape(-1)[0]) for k, v in sums.items()}
