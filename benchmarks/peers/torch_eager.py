"""The harness's MLP and CNN in PyTorch eager mode, timed like `harness bench` (windows, median, p10/p90)."""

from __future__ import annotations

import itertools
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


def _model(name: str, width: int = 1):
    """harness's model ``name`` at ``width``, as the recipe describes it ('SAME' convolutions, its pooling)."""
    from torch import nn

    from harness import peers

    copied = peers.scaled(name, width)
    if copied.model == "mlp":
        sizes = (28 * 28, *copied.hidden)
        hidden = [layer for i, o in itertools.pairwise(sizes) for layer in (nn.Linear(i, o), nn.ReLU())]
        return nn.Sequential(nn.Flatten(), *hidden, nn.Linear(sizes[-1], copied.classes))
    pool = nn.MaxPool2d if copied.pool == "max" else nn.AvgPool2d
    (c1, c2), dense = copied.channels, copied.dense
    return nn.Sequential(
        *(nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), pool(2)),
        *(nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), pool(2)),
        *(nn.Flatten(), nn.Linear(7 * 7 * c2, dense), nn.ReLU(), nn.Linear(dense, copied.classes)),
    )


def measure(
    model: str, batch_size: int, width: int = 1, windows: int = 7, dispatches_per_window: int = 8, warmup: int = 3
) -> dict:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    net = _model(model, width)
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
