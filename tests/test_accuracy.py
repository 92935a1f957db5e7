"""`harness bench accuracy`: a recipe's ledger row from its finished runs, refusing runs of another recipe."""

from __future__ import annotations

import json

import pytest

from harness import accuracy, cli
from harness.errors import HarnessError


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_data_dir):
    """Two finished smoke runs (seeds 0 and 1) and one that stopped at its target after the first of two epochs."""
    base = tmp_path_factory.mktemp("runs")
    made = {}
    for name, extra in (
        ("s0", ["--config.seed=0"]),
        ("s1", ["--config.seed=1"]),
        ("long", ["--config.num_epochs=2", "--config.stop_at_accuracy=0.01"]),
    ):
        args = ["train", "--config", "smoke", "--workdir", str(base / name), f"--config.data_dir={tiny_data_dir}"]
        assert cli.main([*args, "--config.report=false", *extra]) == 0
        made[name] = base / name
    return made, tiny_data_dir


def test_the_row_holds_each_seeds_final_accuracy_and_their_median(runs, tmp_path, capsys):
    made, data_dir = runs
    ledger_dir = tmp_path / "ledger"
    argv = ["bench", "accuracy", "--config", "smoke", "--workdirs", str(made["s1"]), str(made["s0"])]
    assert cli.main([*argv, "--ledger", str(ledger_dir), f"--config.data_dir={data_dir}"]) == 0
    assert "smoke: median test accuracy" in capsys.readouterr().out
    (row,) = [json.loads(line) for line in (ledger_dir / "cpu.jsonl").read_text().splitlines()]
    f = row["figures"]
    finals = {}
    for seed in (0, 1):
        rows = [json.loads(line) for line in (made[f"s{seed}"] / "metrics.jsonl").read_text().splitlines()]
        finals[seed] = [r for r in rows if r["kind"] == "eval"][-1]["test_accuracy"]
    assert row["kind"] == "accuracy" and f["seeds"] == [0, 1]
    assert [r["accuracy"] for r in f["runs"]] == [finals[0], finals[1]]
    assert f["median_accuracy"] == pytest.approx((finals[0] + finals[1]) / 2)
    assert f["min_accuracy"] == min(finals.values()) and f["max_accuracy"] == max(finals.values())


def test_runs_of_another_recipe_or_unfinished_or_twice_the_same_seed_are_refused(runs):
    made, data_dir = runs
    overrides = [f"data_dir={data_dir}"]
    with pytest.raises(HarnessError, match=r"config.learning_rate=0.003, but the recipe has 0.01"):
        accuracy.figures("smoke", [made["s0"]], [*overrides, "learning_rate=0.01"])
    with pytest.raises(HarnessError, match="two runs have the same seed"):
        accuracy.figures("smoke", [made["s0"], made["s0"]], overrides)
    with pytest.raises(HarnessError, match="evaluated up to epoch 1 of 2: not finished"):
        accuracy.figures("smoke", [made["long"]], [*overrides, "num_epochs=2"])
    with pytest.raises(HarnessError, match=r"no config\.json"):
        accuracy.figures("smoke", [made["s0"] / "checkpoints"], overrides)


def test_bench_accuracy_without_workdirs_is_one_line(capsys):
    assert cli.main(["bench", "accuracy", "--config", "smoke", "--no-ledger"]) == 2
    assert "--workdirs" in capsys.readouterr().err
