"""TPU slices without a TPU: the compile-only devices of a described slice, from libtpu on any host.

libtpu (``pip install 'harness[tpu]'``) compiles for a *described* TPU topology on a CPU-only host, as MaxText's
``train_compile.py`` does: :func:`describe` turns a Cloud TPU accelerator type (``v5e-8``, ``v2-8``) or a libtpu
topology (``v5e:2x4``) into a :class:`Slice` whose abstract devices go where real devices go
(:func:`harness.build.build`); nothing is ever allocated on them.

On a host without TPU chips, libtpu's start-up prints warnings about ``TPU_ACCELERATOR_TYPE`` and
``TPU_WORKER_HOSTNAMES`` and an ``INVALID_ARGUMENT … unexpected worker hostname`` line although it then works:
:func:`quiet_start` keeps them off the terminal there (never on a TPU host, where libtpu's words matter).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness.errors import HarnessError

INSTALL_HINT = "pip install 'harness[tpu]' (libtpu, about 700 MB)"

# Cloud TPU accelerator types → (libtpu topology, chips per host bounds; None: libtpu's default 2x2x1). v2, v3, v4
# and v5p count TensorCores (two per chip), v5e and v6e chips. One host holds 4 chips (8 for v5e/v6e up to 8).
ACCELERATOR_TYPES: dict[str, tuple[str, tuple[int, int, int] | None]] = {
    "v2-8": ("v2:2x2", None),
    "v3-8": ("v3:2x2", None),
    "v4-8": ("v4:2x2x1", None),
    "v4-16": ("v4:2x2x2", None),
    "v5p-8": ("v5p:2x2x1", None),
    "v5p-16": ("v5p:2x2x2", None),
    "v5e-1": ("v5e:1x1", (1, 1, 1)),
    "v5e-4": ("v5e:2x2", (2, 2, 1)),
    "v5e-8": ("v5e:2x4", (2, 4, 1)),
    "v5e-16": ("v5e:4x4", None),
    "v5e-256": ("v5e:16x16", None),
    "v6e-1": ("v6e:1x1", (1, 1, 1)),
    "v6e-4": ("v6e:2x2", (2, 2, 1)),
    "v6e-8": ("v6e:2x4", (2, 4, 1)),
    "v6e-256": ("v6e:16x16", None),
}
DEFAULT_SLICES = "v2-8,v3-8,v4-8,v5e-8,v5p-8,v6e-8,v5e-256"  # every generation users rent, and a pod slice
ALIASES = {"v5litepod": "v5e", "v6litepod": "v6e"}  # Cloud's other spelling of the same accelerator types
_TOPOLOGY = re.compile(r"v(2|3|4|5e|5p|6e):\d+x\d+(x\d+)?")


@dataclasses.dataclass(frozen=True)
class Slice:
    """A described TPU slice: its abstract devices and what they are."""

    name: str  # as asked: an accelerator type (v5e-8) or a topology (v5e:2x4)
    topology: str  # libtpu's name
    devices: tuple
    chips: int
    hosts: int

    @property
    def device_kind(self) -> str:
        return self.devices[0].device_kind

    @property
    def devices_per_chip(self) -> int:
        return len(self.devices) // self.chips

    def describe(self) -> str:
        """E.g. ``v5e-8 (v5e:2x4): 8 TPU v5 lite devices on 8 chips, 1 host``."""
        hosts = f"{self.hosts} host" + ("s" if self.hosts > 1 else "")
        topo = f" ({self.topology})" if self.topology != self.name else ""
        return f"{self.name}{topo}: {len(self.devices)} {self.device_kind} devices on {self.chips} chips, {hosts}"

    def fingerprint(self) -> dict:
        """What a predicted ledger row names of the slice it was compiled for."""
        return {
            "accelerator": self.name,
            "topology": self.topology,
            "chips": self.chips,
            "hosts": self.hosts,
            "devices_per_chip": self.devices_per_chip,
            "libtpu": libtpu_version(),
        }


def libtpu_version() -> str | None:
    """The installed (and importable) libtpu's version, or None."""
    from importlib import metadata

    try:
        importlib.import_module("libtpu")
        return metadata.version("libtpu")
    except (ImportError, metadata.PackageNotFoundError):
        return None


def require_libtpu() -> None:
    """A one-line :class:`HarnessError` saying how to install libtpu when it is missing."""
    try:
        importlib.import_module("libtpu")
    except ImportError:
        raise HarnessError(f"compiling for a TPU slice needs libtpu, which is not installed: {INSTALL_HINT}") from None


GOOGLE_PCI_VENDOR = "0x1ae0"
TPU_PCI_DEVICES = {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"}  # as JAX's hardware_utils


def has_tpu_chips(pci: Path = Path("/sys/bus/pci/devices"), dev: Path = Path("/dev")) -> bool:
    """Whether this host has TPU chips: a PCI device of Google's with a TPU's device id, as JAX itself looks for
    them (Google's gVNIC network card shares the vendor id), or a TPU driver's ``/dev/accel*``."""
    if any(dev.glob("accel[0-9]*")):
        return True
    for vendor in pci.glob("*/vendor"):
        with contextlib.suppress(OSError):
            google = vendor.read_text().strip() == GOOGLE_PCI_VENDOR
            if google and (vendor.parent / "device").read_text().strip() in TPU_PCI_DEVICES:
                return True
    return False


def _compile_only() -> None:
    """On a host without TPU chips, libtpu only compiles: let several processes load it at once (it otherwise
    takes a host-wide lock file, and a second harness process fails with "multi-process lockfile")."""
    if not has_tpu_chips():
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


@contextlib.contextmanager
def quiet_start() -> Iterator[None]:
    """Runs the body with file descriptor 2 sent to a temporary file when libtpu is installed on a host without TPU
    chips (where its start-up warnings are noise; a failure still raises its exception). Elsewhere, does nothing."""
    if libtpu_version() is None or has_tpu_chips():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def load_quietly() -> None:
    """Loads and starts the libtpu plugin now, quietly where :func:`quiet_start` says so, without starting JAX's
    backends (``jax.distributed.initialize`` may still follow). A harness command calls this first when libtpu is
    installed, so that the warnings of its start-up never reach the terminal; nothing happens without libtpu."""
    if libtpu_version() is None or has_tpu_chips():
        return
    _compile_only()
    from jax.experimental import topologies

    with quiet_start(), contextlib.suppress(Exception):  # a failure here shows again where libtpu is used
        topologies.get_topology_desc(ACCELERATOR_TYPES["v5e-4"][0], "tpu")


def resolve_name(name: str) -> tuple[str, tuple[int, int, int] | None]:
    """(libtpu topology, chips per host bounds) of an accelerator type or topology; a one-line error otherwise."""
    text = name.strip().lower()
    for alias, generation in ALIASES.items():
        text = text.replace(alias, generation)
    if text in ACCELERATOR_TYPES:
        return ACCELERATOR_TYPES[text]
    if _TOPOLOGY.fullmatch(text):
        return text, None
    raise HarnessError(
        f"--topology {name!r}: not a TPU slice; an accelerator type ({', '.join(ACCELERATOR_TYPES)}) or a libtpu "
        "topology such as v5e:4x4 or v4:2x2x2"
    )


def describe(name: str) -> Slice:
    """The :class:`Slice` of an accelerator type or topology (libtpu needed: else one line saying how to get it)."""
    require_libtpu()
    topology, per_host = resolve_name(name)
    from jax.experimental import topologies

    _compile_only()
    kwargs = {"chips_per_host_bounds": list(per_host)} if per_host else {}
    try:
        with quiet_start():
            devices = tuple(topologies.get_topology_desc(topology, "tpu", **kwargs).devices)
    except Exception as e:  # libtpu's own words: one line
        first = " ".join(str(e).split())[:300]
        raise HarnessError(f"--topology {name}: libtpu cannot describe {topology} ({first})") from None
    chips = len({tuple(d.coords) for d in devices})
    hosts = len({d.process_index for d in devices})
    return Slice(name.strip(), topology, devices, chips, hosts)
