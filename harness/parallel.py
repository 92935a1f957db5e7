"""The one module where devices appear: wraps the pure steps with ``pmap`` or ``jit`` + ``NamedSharding``.

Both strategies are data parallel and give the single-device result for the same global batch (a test guards
this: see the gradient-scale pitfall in DESIGN.md).

- ``pmap`` (default): state and data carry a leading device axis (one copy per device, placed once); each device
  takes its slice of the batch indices; gradients and metric sums are ``psum``-ed over the device axis.
- ``jit``: state and data are replicated global arrays on a 1-D ``Mesh``; the indices, and so the batch, are
  sharded along its ``data`` axis; XLA inserts the collectives.
"""

from __future__ import annotations

import collections
import time
from functools import partial
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from harness import steps
from harness.errors import ConfigError

AXIS = "devices"
STRATEGIES = ("pmap", "jit")


def select_devices(num_devices: int = 0) -> list:
    """The first ``num_devices`` local devices (0 = all)."""
    available = jax.local_devices()
    if num_devices > len(available):
        raise ConfigError(
            f"config.num_devices={num_devices}: only {len(available)} {available[0].platform} device(s) here"
        )
    return available[: num_devices or len(available)]


class Parallel:
    """Places state and data on devices and runs the compiled train/eval steps."""

    def __init__(self, kind: str, devices: list, graphdef, tx):
        if kind not in STRATEGIES:
            raise ConfigError(f"config.parallel={kind!r}: allowed: {', '.join(STRATEGIES)}")
        self.kind = kind
        self.devices = list(devices)
        self.mesh = Mesh(np.array(self.devices), (AXIS,))
        self.traces: collections.Counter = collections.Counter()
        train = partial(steps.train_step, graphdef, tx)
        evaluate = partial(steps.eval_step, graphdef)
        if kind == "pmap":
            psum = partial(jax.lax.psum, axis_name=AXIS)
            self._train = jax.pmap(
                self._counted("train", train, psum), axis_name=AXIS, devices=self.devices, donate_argnums=(0,)
            )
            self._eval = jax.pmap(self._counted("eval", evaluate, psum), axis_name=AXIS, devices=self.devices)
        else:
            repl, split = self._sharding(P()), self._sharding(P(AXIS))
            self._train = jax.jit(
                self._counted("train", train, steps.identity),
                in_shardings=(repl, repl, split),
                out_shardings=(repl, repl),
                donate_argnums=(0,),
            )
            self._eval = jax.jit(
                self._counted("eval", evaluate, steps.identity),
                in_shardings=(repl, repl, split),
                out_shardings=repl,
            )

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def _sharding(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    def _counted(self, name: str, fn, reduce):
        def traced(*args):
            self.traces[name] += 1  # runs once per trace, never per call
            return fn(*args, reduce=reduce)

        return traced

    def replicate(self, tree: Any) -> Any:
        """Places a host/single-device pytree on every device (pmap: a leading device axis)."""
        if self.kind == "jit":
            return jax.device_put(tree, self._sharding(P()))
        n = self.num_devices
        return jax.tree.map(
            lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n, *np.shape(x))), self._sharding(P(AXIS))),
            tree,
        )

    def unreplicate(self, tree: Any) -> Any:
        """One host copy (numpy) of a replicated pytree — never pmap's per-device copies."""
        if self.kind == "jit":
            return jax.device_get(tree)
        return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)

    def shard_indices(self, indices: np.ndarray) -> jax.Array:
        """Splits a global batch of indices across the devices, in device order."""
        if self.kind == "jit":
            return jax.device_put(indices, self._sharding(P(AXIS)))
        return jax.device_put(indices.reshape(self.num_devices, -1), self._sharding(P(AXIS)))

    def compile(self, state: Any, train_data: Any, eval_data: Any, indices: jax.Array) -> float:
        """Compiles both steps ahead of time for these shapes; returns the seconds it took. Later calls with other
        shapes fail loudly instead of silently recompiling."""
        start = time.perf_counter()
        self._train = self._train.lower(state, train_data, indices).compile()
        self._eval = self._eval.lower(state.params, eval_data, indices).compile()
        return time.perf_counter() - start

    def train_step(self, state: Any, data: Any, indices: jax.Array) -> tuple[Any, Any]:
        """Runs one step; ``state`` is donated. Returns the new state and the device-resident metric sums."""
        return self._train(state, data, indices)

    def eval_step(self, params: Any, data: Any, indices: jax.Array) -> Any:
        """Metric sums of one eval batch (device-resident)."""
        return self._eval(params, data, indices)

    def metrics_to_host(self, sums: Any) -> dict:
        """Device metric sums → host floats (pmap's copies are equal after the psum: take the first)."""
        host = jax.device_get(sums)
        return {k: float(np.asarray(v).reshape(-1)[0]) for k, v in host.items()}

    def params_of(self, state: Any) -> Any:
        """The params of a placed state, still placed (to pass to :meth:`eval_step`)."""
        return state.params
