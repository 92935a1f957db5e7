"""Accuracy rows for the ledger, read from finished runs: ``harness bench accuracy --config NAME --workdirs W …``.

A recipe's claim ("median test accuracy over seeds 0, 1, 2") is what its full runs reached, so the row is made from
the runs themselves, not from new training: each workdir must have trained exactly the recipe of ``NAME`` (every
key that changes what is computed equal to the config's, the seed aside) to its last epoch on this kind of device.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from harness import checkpoint
from harness import config as config_lib
from harness.errors import HarnessError


def _run(workdir: Path, expected: dict) -> dict:
    """One finished run's seed, final test accuracy and loss, epochs and training seconds; HarnessError when the
    workdir did not train the expected recipe to its end on this kind of device."""
    from harness.report import read_metrics
    from harness.train import TRAJECTORY_KEYS

    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise HarnessError(f"{workdir}: no config.json (not a harness run)")
    saved = json.loads(path.read_text())
    for key in (*TRAJECTORY_KEYS, "num_epochs", "eval_flip"):
        if key != "seed" and key in expected and saved.get(key, expected[key]) != expected[key]:
            raise HarnessError(f"{workdir}: config.{key}={saved.get(key)!r}, but the recipe has {expected[key]!r}")
    rows = read_metrics(workdir)
    evals = [r for r in rows if r.get("kind") == "eval"]
    if not evals or evals[-1]["epoch"] != expected["num_epochs"]:
        done = evals[-1]["epoch"] if evals else 0
        raise HarnessError(f"{workdir}: evaluated up to epoch {done} of {expected['num_epochs']}: not finished")
    here = checkpoint.fingerprint()
    records = sorted(Path(workdir, "checkpoint_digests").glob("*.json"), key=lambda p: int(p.stem))
    made = json.loads(records[-1].read_text()).get("fingerprint", {}) if records else {}
    if (made.get("platform"), made.get("device_kind")) != (here["platform"], here["device_kind"]):
        raise HarnessError(f"{workdir}: trained on {made.get('device_kind', 'an unknown device')}, not on this machine")
    seconds = sum(r["epoch_seconds"] for r in rows if "epoch_seconds" in r)
    last = evals[-1]
    return {
        "seed": saved["seed"],
        "accuracy": last["test_accuracy"],
        "test_loss": last["test_loss"],
        "epochs": last["epoch"],
        "train_seconds": seconds,
    }


def figures(config_name: str, workdirs: list[Path], overrides: list[str] = ()) -> dict:
    """The runs' per-seed results with their median, min and max test accuracy (the seeds must differ)."""
    expected = json.loads(config_lib.load(config_name, overrides).to_json_best_effort())  # as config.json has it
    runs = sorted((_run(Path(w), expected) for w in workdirs), key=lambda r: r["seed"])
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise HarnessError(f"--workdirs: two runs have the same seed ({seeds}): one run per seed")
    accuracies = [r["accuracy"] for r in runs]
    return {
        "seeds": seeds,
        "median_accuracy": statistics.median(accuracies),
        "min_accuracy": min(accuracies),
        "max_accuracy": max(accuracies),
        "median_train_seconds": statistics.median(r["train_seconds"] for r in runs),
        "runs": runs,
        "source": "finished workdirs",
    }
