"""The plan of a run: how it runs on its devices, resolved once from the config and the devices.

The config's automatic values (``conv=auto``, ``micro_batches=0``, ``steps_per_dispatch=0``) mean what the
per-platform table :data:`AUTO` says for the devices at hand. Everything downstream (model, :class:`Parallel
<harness.parallel.Parallel>`, loop, bench) reads the resolved :class:`Plan` and decides no policy of its own.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from harness import config as config_lib
from harness import models


@dataclasses.dataclass(frozen=True)
class Auto:
    """What the automatic config values mean on one kind of device set."""

    conv: str  # the convolution implementation
    micro_batches: tuple[int, ...]  # for a CNN with slice convolutions: the first that divides the per-device batch
    steps_per_dispatch: tuple[int, ...]  # the first that divides the log and checkpoint intervals (else 1)


# Keyed by (platform, one device in one process). Measured on the 2-core Xeon, CPU only (not on GPU/TPU here):
# - slice convolutions: their matmul gradients beat XLA:CPU's convolution backward on one device (2,507 vs 1,771
#   ex/s for the CNN); a CPU split into several devices ran XLA's convolutions faster (3,435–3,525 vs 2,633–2,842
#   ex/s on 4 devices). On GPU/TPU XLA's convolutions are right.
# - micro-batches: 32-example slices ran fastest with slice convolutions on one CPU device; XLA:CPU's own
#   convolutions inside the slice loop were 10× slower.
# - steps per dispatch: 16 trained the MLP 1.78× and the CNN 1.14× faster (`harness bench --steps-per-dispatch
#   1,16`). Several processes stop on a step of JAX's choosing, so a multi-process run takes 1.
AUTO: dict[tuple[str, bool], Auto] = {
    ("cpu", True): Auto(conv="slices", micro_batches=(4, 2), steps_per_dispatch=(16, 8, 4, 2)),
}
DEFAULT = Auto(conv="xla", micro_batches=(), steps_per_dispatch=())  # any other platform or device set


def auto(devices: list) -> Auto:
    """The row of :data:`AUTO` for ``devices``."""
    return AUTO.get((devices[0].platform, len(devices) == 1 and jax.process_count() == 1), DEFAULT)


def conv_impl(choice: str, devices: list) -> str:
    """The convolution implementation: ``choice``, or for ``auto`` the table's."""
    return auto(devices).conv if choice == "auto" else choice


def micro_batches(choice: int, devices: list, model: str, per_device_batch: int, conv: str, norm: str = "none") -> int:
    """Slices each device's batch is cut into per step (gradients summed; the same maths): ``choice``, or for ``0``
    the table's first count dividing ``per_device_batch`` when ``model`` is a CNN with slice convolutions, else 1.

    BatchNorm (``norm="batch"``) takes its statistics over the whole global batch, so it gets 1: slices would
    normalise each by its own statistics (ghost batches), another model. Validation refuses an explicit count > 1
    with BatchNorm, so this never changes the maths silently."""
    if norm == "batch":
        return 1
    if choice:
        return choice
    if models.family(model) != "cnn" or conv != "slices":
        return 1
    return next((m for m in auto(devices).micro_batches if per_device_batch % m == 0), 1)


def steps_per_dispatch(choice: int, devices: list, log_every: int, checkpoint_every: int) -> int:
    """Train steps one device call runs (a ``lax.scan``): ``choice``, or for ``0`` the table's first count dividing
    the log and checkpoint intervals (so rows and checkpoints fall between dispatches), else 1."""
    if choice:
        return choice
    fits = (k for k in auto(devices).steps_per_dispatch if log_every % k == 0 and checkpoint_every % k == 0)
    return next(fits, 1)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a run runs: resolved once (:func:`resolve`), printed, stored in checkpoints and ledger rows."""

    strategy: str  # pmap | jit | shard_map
    platform: str
    num_devices: int
    processes: int
    family: str  # the model's: mlp | cnn
    conv: str  # xla | slices (what the model is built with; only a CNN has convolutions)
    micro_batches: int
    steps_per_dispatch: int
    dtype: str

    def describe(self) -> str:
        """One line, e.g. ``pmap on 1 cpu device, slice convolutions, 4 micro-batches, 16 steps per dispatch,
        float32``."""
        where = f"{self.strategy} on {_count(self.num_devices, f'{self.platform} device')}"
        if self.processes > 1:
            where += f" in {self.processes} processes"
        parts = [where]
        if self.family == "cnn":
            parts.append(f"{'slice' if self.conv == 'slices' else 'XLA'} convolutions")
        parts += [_count(self.micro_batches, "micro-batch"), f"{_count(self.steps_per_dispatch, 'step')} per dispatch"]
        return ", ".join([*parts, self.dtype])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith("ch") else f"{n} {noun}s"


def resolve(config: ml_collections.ConfigDict, devices: list) -> Plan:
    """Checks ``config`` against ``devices`` (:func:`harness.config.validate`: the one validation of a run) and
    resolves its plan on them."""
    config_lib.validate(config, len(devices))
    conv = conv_impl(config.conv, devices)
    per_device = config.batch_size // len(devices)
    return Plan(
        strategy=config.parallel,
        platform=devices[0].platform,
        num_devices=len(devices),
        processes=jax.process_count(),
        family=models.family(config.model),
        conv=conv,
        micro_batches=micro_batches(config.micro_batches, devices, config.model, per_device, conv, config.norm),
        steps_per_dispatch=steps_per_dispatch(
            config.steps_per_dispatch, devices, config.log_every_steps, config.checkpoint_every_steps
        ),
        dtype=config.dtype,
    )
