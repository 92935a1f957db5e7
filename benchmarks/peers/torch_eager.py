"""The harness's MLP and CNN in PyTorch eager mode, timed like `harness bench` (windows, median, p10/p90)."""

from __future__ import annotations

import os
import time

import numpy as np

from harness.bench import summarize, time_windows
from harness.peers import recipe

NAME = "pytorch-eager"


def available() -> tuple[bool, str]:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False, "torch is not installed (pip install -e '.[peers]')"
    return True, ""


def _model(name: str):
    from torch import nn

    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    if name == "cnn":  # same layers as harness.models.CNN ('SAME' padding, avg-pool 2)
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(7 * 7 * 64, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        )
    raise ValueError(f"peer model {name!r}: mlp or cnn")


def measure(model: str, batch_size: int, windows: int = 7, dispatches_per_window: int = 8, warmup: int = 3) -> dict:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    net = _model(model)
    opt = torch.optim.Adam(net.parameters(), lr=recipe().schedule.peak)
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (8192, 1, 28, 28), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 10, 8192).astype(np.int64))
    cursor = 0

    def step():
        nonlocal cursor
        idx = torch.arange(cursor, cursor + batch_size) % len(labels)
        cursor += batch_size
        x = images[idx].float() / 255.0
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), labels[idx])
        loss.backward()
        opt.step()
        return loss

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(warmup):
        step()
    times = time_windows(step, lambda loss: float(loss.detach()), windows, dispatches_per_window)
    return {
        "compile_seconds": 0.0,
        "time_to_first_step_seconds": first,
        **summarize(times, batch_size),
        "steps_per_window": dispatches_per_window,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
