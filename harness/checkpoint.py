"""Orbax checkpoints of the train state plus the run's metadata (config, data position, metrics, fingerprint).

The state is saved as host (numpy) arrays — one copy, never pmap's per-device replicas — so it restores on any
device count. Saves are asynchronous; :meth:`Checkpoints.close` waits for the last one to commit.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

import harness
from harness.errors import WorkdirError


def fingerprint() -> dict:
    """Versions and devices of this process, saved with every checkpoint."""
    import flax
    import optax

    device = jax.devices()[0]
    return {
        "harness": harness.__version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax": getattr(ocp, "__version__", "unknown"),
        "python": platform.python_version(),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
    }


class Checkpoints:
    """``WORKDIR/checkpoints``: the last ``keep`` saves of (state, metadata)."""

    def __init__(self, workdir: Path, keep: int = 2, create: bool = True):
        directory = Path(workdir).resolve() / "checkpoints"
        if not create and not directory.is_dir():
            raise WorkdirError(f"{workdir}: no checkpoints (train into this workdir first)")
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
        self.manager = ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts an async save of the host ``state`` and the JSON ``meta`` at ``step``."""
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores (state shaped like ``target``, metadata) at ``step`` (default: the latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise WorkdirError(f"{self.manager.directory}: no checkpoint to restore")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
        return restored.state, restored.meta

    def close(self) -> None:
        """Waits for pending saves to commit, then releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
