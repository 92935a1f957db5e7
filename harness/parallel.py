"""The one module that compiles: wraps the pure steps with ``pmap``, ``jit`` + ``NamedSharding`` or ``jax.shard_map``
for the devices of a resolved plan (:mod:`harness.plan`), and decides no policy of its own.

All three strategies are data parallel and give the single-device result for the same global batch (a test guards
this: see the gradient-scale pitfall in DESIGN.md).

- ``pmap`` (default): state and data carry a leading device axis (one copy per device, placed once); each device
  takes its slice of the batch indices; gradients and metric sums are ``psum``-ed over the device axis.
- ``jit``: state and data are replicated global arrays on a 1-D ``Mesh``; the indices, and so the batch, are
  sharded along its ``devices`` axis; XLA inserts the collectives.
- ``shard_map``: the same global arrays as ``jit``, and the step written per device as under ``pmap``, with explicit
  collectives (:func:`psum_varying`) and ``check_vma`` on. JAX's own path forward from ``pmap`` (which, since JAX
  0.8, is implemented on ``jit(shard_map)`` and in maintenance mode): per-device code, one global array type.

Several processes (``jax.distributed``: :mod:`harness.runtime`) form one run: the mesh spans every process's
devices, every array is a global ``jax.Array`` assembled from each process's own shards
(``make_array_from_callback``: a process only ever touches the rows of its own devices), and collectives cross
processes (gloo on CPU, the interconnect on GPU/TPU).

Three ways to feed a train step: indices into device-resident data (``train_step``, the default), several such
steps in one dispatch (``train_steps``, indices [steps, batch]), or a batch built on the host and sent with each
step (``train_batch``, the host-pipeline baseline). ``predict`` gives class probabilities of host images.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from harness import runtime, steps
from harness.config import ALLOWED
from harness.errors import ConfigError, OutOfMemoryError
from harness.steps import inference  # compile() has an argument named steps

AXIS = "devices"
STRATEGIES = ALLOWED["parallel"]  # one source: the config's allowed values
# How each argument is laid out under jit: replicated, split along its first axis, or along its second.
REPL, SPLIT, SPLIT_1 = P(), P(AXIS), P(None, AXIS)


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


def free_bytes(devices: list) -> int | None:
    """Free memory per device to check a need against before it is allocated, or None where no check is made:
    unknown, or with several processes (hosts may differ, and a one-sided stop would leave the others waiting)."""
    if jax.process_count() > 1 or runtime.is_abstract(devices):
        return None
    return runtime.available_bytes(devices)


@dataclasses.dataclass(frozen=True)
class Budget:
    """What a run's compiled steps are checked against: the free memory per device measured before the run
    allocated anything (None: no check), the bytes of its train state, and its ``config.width``."""

    free: int | None = None
    state: int | None = None
    width: int = 1


def model_knob(width: int) -> str:
    """The setting to name when the model is too large: ``config.width=W`` when widened, else the model."""
    return f"config.width={width}" if width > 1 else "the model"


def check_memory(compiled: list, devices: list, budget: Budget | None = None) -> None:
    """Stops with one line, before the first step, when a compiled step needs more memory than a device has: the
    free memory of ``budget`` (measured before the run allocated its state and data, which the need includes),
    else what is free now. The hint names the model's width when the need is within three times the train state
    (the state in and out, its gradients, the optimizer's temporaries: the model's size, not the batch, is at fault)."""
    have = budget.free if budget is not None and budget.free is not None else free_bytes(devices)
    if have is None:
        return
    needs = [n for n in (needed_bytes(c) for c in compiled) if n is not None]
    if needs and max(needs) > have:
        state = budget.state if budget is not None else None
        width = budget.width if budget is not None else 1
        hint = (
            f"use a smaller config.width or model ({model_knob(width)}: its train state alone is "
            f"{state / 2**30:.1f} GiB)"
            if state is not None and 3 * state >= max(needs)  # state in and out, gradients, optimizer temporaries
            else "use a smaller config.batch_size (or model)"
        )
        raise OutOfMemoryError(
            f"the train step needs {max(needs) / 2**30:.1f} GiB per device (XLA's estimate) but {devices[0].platform} "
            f"has {max(have, 0) / 2**30:.1f} GiB free per device: {hint}"
        )


def psum_varying(tree: Any) -> Any:
    """``shard_map``'s ``reduce``: sums over the devices the values that differ between them (a device's metric sums,
    BatchNorm's moments) and leaves the others alone. With ``check_vma`` on, the gradient of replicated parameters
    is already summed over the devices by ``grad`` itself (the transpose of their implicit broadcast): summing it
    again would multiply it by the device count (DESIGN.md, "Gradient scale under jax.shard_map")."""
    return jax.tree.map(lambda x: jax.lax.psum(x, AXIS) if AXIS in _varying_axes(x) else x, tree)


def _varying_axes(x: Any) -> frozenset:
    """The mesh axes along which the traced ``x`` differs between devices inside ``shard_map`` (``check_vma``)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)  # jax 0.10
    return manual.varying if manual is not None else frozenset(getattr(aval, "vma", ()))


class Parallel:
    """Places state and data on devices and runs the compiled train/eval steps."""

    def __init__(
        self, kind: str, devices: list, graphdef, tx, micro_batches: int = 1, options: steps.Options | None = None
    ):
        if kind not in STRATEGIES:
            raise ConfigError(f"config.parallel={kind!r}: allowed: {', '.join(STRATEGIES)}")
        self.kind = kind
        self.devices = list(devices)
        self.abstract = runtime.is_abstract(self.devices)  # a described TPU slice: placement makes only shapes
        self.mesh = Mesh(np.array(self.devices), (AXIS,))
        self.traces: collections.Counter = collections.Counter()
        self.budget: Budget | None = None  # set by harness.build: free memory measured before the run allocated
        options = steps.Options() if options is None else options
        train = dict(micro_batches=micro_batches, options=options)
        flip = options.eval_flip
        self._fns = {
            "train": self._wrap("train", partial(steps.train_step, graphdef, tx, **train), (REPL, REPL, SPLIT), True),
            "train_steps": self._wrap(
                "train_steps", partial(steps.train_steps, graphdef, tx, **train), (REPL, REPL, SPLIT_1), True
            ),
            "train_batch": self._wrap("train_batch", partial(steps.update, graphdef, tx, **train), (REPL, SPLIT), True),
            "eval": self._wrap("eval", partial(steps.eval_step, graphdef, eval_flip=flip), (REPL, REPL, SPLIT), False),
            "predict": self._wrap(
                "predict",
                lambda variables, images, reduce: steps.predict_probs(graphdef, variables, images, flip),
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
        reduce = {"pmap": partial(jax.lax.psum, axis_name=AXIS), "shard_map": psum_varying}.get(
            self.kind, steps.identity
        )

        def traced(*args):
            self.traces[name] += 1  # runs once per trace, never per call
            return fn(*args, reduce=reduce)

        donate = (0,) if donate_state else ()
        if self.kind == "pmap":
            return jax.pmap(traced, axis_name=AXIS, devices=self.devices, donate_argnums=donate)
        out_specs = (REPL, REPL) if donate_state else out_layout or REPL
        out = jax.tree.map(self._sharding, out_specs, is_leaf=lambda x: isinstance(x, P))
        shardings = tuple(self._sharding(spec) for spec in layout)
        if self.kind == "shard_map":  # each device runs ``traced`` on its shard; collectives are explicit
            traced = jax.shard_map(traced, mesh=self.mesh, in_specs=layout, out_specs=out_specs, check_vma=True)
        return jax.jit(traced, in_shardings=shardings, out_shardings=out, donate_argnums=donate)

    # ---- placement -----------------------------------------------------------------------------------------

    def _global(self, x: np.ndarray, spec: P) -> jax.Array | jax.ShapeDtypeStruct:
        """The global array ``x`` laid out as ``spec``; this process fills only its own devices' shards. On
        abstract devices (:mod:`harness.topology`), its shape, dtype and layout alone."""
        if self.abstract:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self._sharding(spec))
        return jax.make_array_from_callback(x.shape, self._sharding(spec), lambda index: x[index])

    def replicate(self, tree: Any) -> Any:
        """Places a host pytree (the same on every process) on every device (pmap: a leading device axis)."""
        if self.abstract:  # shapes only: leaves may be jax.ShapeDtypeStruct already
            lead, spec = ((self.num_devices,), SPLIT) if self.kind == "pmap" else ((), REPL)
            shaped = partial(jax.ShapeDtypeStruct, sharding=self._sharding(spec))
            return jax.tree.map(lambda x: shaped((*lead, *x.shape), x.dtype), tree)
        if self.kind != "pmap":
            return jax.tree.map(lambda x: self._global(np.asarray(x), REPL), tree)
        n = self.num_devices
        return jax.tree.map(lambda x: self._global(np.broadcast_to(np.asarray(x), (n, *np.shape(x))), SPLIT), tree)

    def generate(self, make: Callable[[], Any]) -> Any:
        """Runs ``make`` (e.g. ``jax.random`` draws) on the devices and lays its pytree out as :meth:`replicate`
        would: data made where it is used, never sent from the host."""
        if self.kind != "pmap":
            return jax.jit(make, out_shardings=self._sharding(REPL))()
        n = self.num_devices

        def stacked():  # pmap's layout: one copy per device along a leading axis
            return jax.tree.map(lambda x: jax.numpy.broadcast_to(x, (n, *x.shape)), make())

        return jax.jit(stacked, out_shardings=self._sharding(SPLIT))()

    def unreplicate(self, tree: Any) -> Any:
        """One host copy (numpy) of a replicated pytree — never pmap's per-device copies."""
        if self.kind != "pmap":
            return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), tree)
        return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)

    def _split(self, x: np.ndarray, axis: int) -> jax.Array:
        """Splits the global ``x`` along ``axis`` across the devices, in device order."""
        x = np.asarray(x)
        if self.kind != "pmap":
            return self._global(x, SPLIT if axis == 0 else SPLIT_1)
        n = self.num_devices
        size = x.shape[axis] // n
        parts_shape = (n, *x.shape[:axis], size, *x.shape[axis + 1 :])
        if self.abstract:
            return jax.ShapeDtypeStruct(parts_shape, x.dtype, sharding=self._sharding(SPLIT))

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
        self._fns["eval"] = self._fns["eval"].lower(inference(state), eval_data, indices).compile()
        check_memory(list(self.compiled().values()), self.devices, self.budget)
        return time.perf_counter() - start

    def compiled(self) -> dict:
        """The steps :meth:`compile` compiled, by name (``train``, ``train_steps`` where fused, ``eval``)."""
        return {n: f for n, f in self._fns.items() if hasattr(f, "memory_analysis")}

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

    def eval_step(self, variables: Any, data: Any, indices: jax.Array) -> Any:
        """Metric sums of one eval batch (device-resident) under ``variables`` (:func:`harness.steps.inference` of
        the placed state)."""
        return self._fns["eval"](variables, data, indices)

    def predict(self, variables: Any, images: np.ndarray) -> np.ndarray:
        """Class probabilities of host ``images`` (padded to a multiple of the device count; single-process) under
        ``variables`` (:func:`harness.steps.inference` of the placed state)."""
        n, pad = len(images), -len(images) % self.num_devices
        padded = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)]) if pad else images
        probs = np.asarray(self._fns["predict"](variables, self._split(padded, 0)))
        return probs.reshape(-1, probs.shape[-1])[:n]

    def metrics_to_host(self, sums: Any) -> dict:
        """Device metric sums → host floats (pmap's copies are equal after the psum: take the first)."""
        return {k: float(np.asarray(v.addressable_shards[0].data).reshape(-1)[0]) for k, v in sums.items()}
