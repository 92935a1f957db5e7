"""Peers for `harness bench --peers`: the same models in other frameworks, from ``benchmarks/peers/*.py``.

Each peer module has ``NAME``, ``available() -> (bool, why)`` and ``measure(model, batch_size, windows,
dispatches_per_window) -> figures``; a peer that can also train to a target accuracy has
``time_to_accuracy(dataset, target, seeds) -> figures``. Both train with :func:`recipe`, read from the shipped
``fashion_mnist_cnn`` config (its values live only there). Their frameworks are optional extras
(``pip install 'harness[peers]'``).
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import ml_collections

from harness import paths

PEERS_DIR = paths.shipped("peers")  # benchmarks/peers of the checkout, packaged in every wheel
RECIPE_CONFIG = "fashion_mnist_cnn"  # the shipped config whose recipe the peers copy
RECIPE_KEYS = ("model", "optimizer", "learning_rate", "batch_size", "schedule", "dtype")  # what they copy of it


def recipe() -> ml_collections.ConfigDict:
    """The config the peers train with; ValueError when it asks for more than they implement (Adam at a constant
    learning rate, float32)."""
    from harness import config as config_lib

    c = config_lib.load(RECIPE_CONFIG)
    if (c.optimizer, c.schedule, c.dtype) != ("adam", "constant", "float32"):
        raise ValueError(
            f"{RECIPE_CONFIG}: the peers implement adam, a constant schedule and float32, "
            f"not {c.optimizer}, {c.schedule}, {c.dtype}"
        )
    return c


def copies_recipe(config: ml_collections.ConfigDict) -> bool:
    """Whether ``config`` trains as the peers do, so that their times to accuracy compare with its."""
    copied = recipe()
    return all(config[k] == copied[k] for k in RECIPE_KEYS)


def modules() -> list[ModuleType]:
    """The peer modules shipped in ``benchmarks/peers`` (the project's own code, in every wheel)."""
    found = []
    for path in sorted(PEERS_DIR.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"harness_peer_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found.append(module)
    return found


def available() -> list[tuple[str, bool, str]]:
    """(name, usable here, why not) for every peer."""
    return [(m.NAME, *m.available()) for m in modules()]


def measure(name: str, model: str, batch_size: int, **kw) -> dict:
    """Times peer ``name`` on ``model`` at ``batch_size``."""
    for m in modules():
        if name == m.NAME:
            return m.measure(model, batch_size, **kw)
    raise KeyError(name)


def time_to_accuracy(name: str, dataset: str, target: float, seeds: list[int]) -> dict | None:
    """Peer ``name``'s time to ``target`` test accuracy with the CNN recipe; None when it cannot train to one."""
    for m in modules():
        if name == m.NAME:
            return m.time_to_accuracy(dataset, target, seeds) if hasattr(m, "time_to_accuracy") else None
    raise KeyError(name)
