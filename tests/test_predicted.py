"""harness.predicted and the ledger's ``predicted`` rows: kept apart from measured rows, never a baseline, rendered
as their own section and into README's markers, with measured ÷ predicted where both exist."""

from __future__ import annotations

import pytest

from harness import ledger, predicted

FP = {
    "platform": "tpu",
    "device_kind": "TPU v5 lite",
    "device_count": 8,
    "process_count": 1,
    "jax": "0.10.2",
    "flax": "0.12.8",
    "optax": "0.2.8",
    "xla_flags": "",
    "accelerator": "v5e-8",
    "topology": "v5e:2x4",
    "chips": 8,
    "hosts": 1,
    "libtpu": "0.0.42.1",
    "compiled_on": "AMD EPYC",
}


def _figures(batch: int, rate: float, fit: dict | None = None) -> dict:
    f = {
        "fits": True,
        "examples_per_sec": rate,
        "examples_per_sec_per_chip": rate / 8,
        "step_seconds": batch / rate,
        "mfu": 0.125,
        "memory_per_device": 64 * 2**20,
        "hbm_per_device": 16 * 2**30,
    }
    return {**f, "fit": fit} if fit else f


def _row(batch: int, rate: float, fit: dict | None = None, model: str = "cnn", kind: str = "predicted") -> dict:
    point = {"model": model, "width": 1, "dtype": "float32", "parallel": "pmap", "batch_size": batch}
    point |= {"accelerator": "v5e-8", "topology": "v5e:2x4"}
    return ledger.make_row(kind, point, _figures(batch, rate, fit), fp=dict(FP))


def _measured(batch: int, rate: float, kind: str = "TPU v5 lite") -> dict:
    fp = {**FP, "device_kind": kind}
    point = {"model": "cnn", "width": 1, "dtype": "float32", "parallel": "pmap", "batch_size": batch}
    figures = {"examples_per_sec": rate, "step_seconds_median": batch / rate}
    figures |= {"step_seconds_p10": batch / rate, "step_seconds_p90": batch / rate}
    return ledger.make_row("throughput", point, figures, fp=fp)


FIT = {"largest": 61440, "first_too_big": 65536, "capped": False, "tried": [128, 256, 61440, 65536]}


def test_a_predicted_row_needs_its_fit_verdict():
    row = _row(128, 1e5)
    assert ledger.validate(row) == []
    del row["figures"]["fits"]
    assert ledger.validate(row) == ["figures.fits missing"]


def test_predicted_rows_go_to_a_file_of_their_own(tmp_path):
    paths = ledger.append([_row(128, 1e5), _measured(128, 5e4)], tmp_path)
    assert sorted(p.name for p in paths) == ["tpu-v5-lite-predicted.jsonl", "tpu-v5-lite.jsonl"]
    assert [r["kind"] for r in ledger.read(tmp_path)] == ["predicted", "throughput"]


def test_a_prediction_is_never_a_baseline_for_bench_check():
    """A predicted row of exactly the fresh row's machine and point, with timed figures, is still no baseline."""
    fresh = _measured(128, 1e3)  # far below the prediction
    twin = {**fresh, "kind": "predicted", "figures": {**fresh["figures"], "examples_per_sec": 1e6, "fits": True}}
    assert ledger.validate(twin) == []
    problems, matched = ledger.compare([fresh], [twin], tolerance=0.2)
    assert (problems, matched) == ([], 0)


def test_predictions_never_enter_the_measured_tables_or_plots():
    rows = [_row(128, 1e5), _row(61440, 2e6, FIT)]
    board = ledger.leaderboard(rows)
    measured, _, section = board.partition(f"## {predicted.TITLE}")
    assert "v5e-8" not in measured and "TPU v5 lite" not in measured  # the throughput table has no row of them
    assert predicted.TITLE in board and "Predictions, not measurements" in section
    from harness import roofline

    assert roofline.panels(rows, lambda fp: fp["device_kind"]) == {}


def test_the_section_shows_each_series_its_largest_batch_and_measured_over_predicted():
    rows = [_row(128, 100_000), _row(256, 150_000), _row(61440, 2_000_000, FIT), _measured(128, 50_000)]
    lines = predicted.table(rows)
    assert len(lines) == 3  # header, rule, one series
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:6] == ["v5e-8 (v5e:2x4: 8 chips, 1 host)", "cnn", "1", "float32", "pmap", "128"]
    assert cells[6] == "100,000" and cells[8] == "12.5%"
    assert cells[10:13] == ["61,440", "2,000,000", "12.5%"]
    assert cells[13] == "0.50"  # measured 50,000 ÷ predicted 100,000 at the same point
    other_device = predicted.table([_row(128, 100_000), _measured(128, 50_000, kind="cpu")])
    assert other_device[2].rstrip(" |").endswith("—")


def test_a_capped_search_says_at_least():
    capped = {"largest": 60000, "first_too_big": None, "capped": True, "tried": [128, 256, 60000]}
    cells = predicted.table([_row(128, 1e5), _row(60000, 1e6, capped)])[2]
    assert "≥ 60,000" in cells


def test_readme_block_is_rendered_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{predicted.README_BEGIN}\nstale\n{predicted.README_END}\nafter\n")
    assert predicted.update_readme(readme, [_row(128, 1e5), _row(61440, 2e6, FIT)])
    text = readme.read_text()
    assert "stale" not in text and "before" in text and "after" in text
    assert "61,440" in text and "Predictions, not measurements" in text
    assert text.count(predicted.README_BEGIN) == 1 and text.count(predicted.README_END) == 1
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not predicted.update_readme(plain, [_row(128, 1e5)])


@pytest.mark.parametrize("order", [["v6e-8", "v2-8", "v5e-256", "v5e-8"]])
def test_series_are_listed_by_tpu_generation(order):
    rows = []
    for name in order:
        row = _row(128, 1e5)
        row["point"]["accelerator"] = row["fingerprint"]["accelerator"] = name
        rows.append(row)
    listed = [line.split("|")[1].split()[0] for line in predicted.table(rows)[2:]]
    assert listed == ["v2-8", "v5e-256", "v5e-8", "v6e-8"]


def test_a_series_whose_first_batch_does_not_fit_says_so():
    fit = {"largest": None, "first_too_big": 128, "capped": False, "tried": [128]}
    row = ledger.make_row(
        "predicted",
        _row(128, 1e5)["point"],
        {"fits": False, "error": "RESOURCE_EXHAUSTED: Ran out of memory on HBM", "fit": fit},
        fp=dict(FP),
    )
    cells = [c.strip() for c in predicted.table([row])[2].strip("|").split("|")]
    assert cells[6:13] == ["n/a", "n/a", "n/a", "does not fit", "none from 128", "n/a", "n/a"]
