"""Benchmark tools (timing on a scripted clock, XLA FLOP counts, result files) and --quick runs of the
voxelisation, input-pipeline and PixelFade-protection benchmarks, so the scripts keep working."""

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import pytest

from anon_jax.models import e2vid
from benchmarks import common, event_reading, input_pipeline, pixelfade_protection, video_round_trip, voxelization


class ScriptedClock:
    """perf_counter stand-in returning the given readings in order."""

    def __init__(self, readings):
        self.readings = list(readings)

    def __call__(self):
        return self.readings.pop(0)


def test_time_fn_median_and_percentiles_of_a_scripted_clock():
    calls = []
    # Three timed calls lasting 2, 7 and 4 s (the warm-up call reads no clock).
    clock = ScriptedClock([0.0, 2.0, 10.0, 17.0, 20.0, 24.0])
    timing = common.time_fn(lambda: calls.append(1), warmup=1, repeats=3, clock=clock)
    assert len(calls) == 4 and clock.readings == []
    assert timing["times_s"] == [2.0, 7.0, 4.0]
    assert timing["median_s"] == 4.0
    # numpy's linear percentiles of [2, 4, 7]: p10 = 2 + 0.2 * 2, p90 = 4 + 0.8 * 3.
    assert timing["p10_s"] == pytest.approx(2.4)
    assert timing["p90_s"] == pytest.approx(6.4)


def test_time_fn_measures_real_time_and_rejects_bad_counts():
    timing = common.time_fn(lambda: time.sleep(0.01), warmup=0, repeats=3)
    assert 0.009 <= timing["median_s"] < 0.5 and len(timing["times_s"]) == 3
    with pytest.raises(ValueError, match="repeats >= 1"):
        common.time_fn(lambda: None, repeats=0)


def test_compiled_flops_of_a_matmul():
    n = 32
    x = jnp.ones((n, n), jnp.float32)
    # XLA counts a multiply and an add per term of the n x n x n product.
    assert common.compiled_flops(jax.jit(jnp.matmul), x, x) == 2 * n**3


def test_common_args_quick_lowers_only_the_default_repeats():
    parser = common.add_common_args(argparse.ArgumentParser())
    assert parser.parse_args([]).repeats == common.DEFAULT_REPEATS
    assert parser.parse_args(["--quick"]).repeats == common.QUICK_REPEATS
    assert parser.parse_args(["--quick", "--repeats", "5"]).repeats == 5
    assert parser.parse_args(["--repeats", "5", "--quick"]).repeats == 5
    with pytest.raises(SystemExit):
        parser.parse_args(["--repeats", "0"])


def test_write_results_table_and_json(tmp_path, capsys):
    rows = [{"size": 1, "ms": 2.5}, {"size": 2, "note": "x"}]
    path = common.write_results("demo", rows, {"repeats": 3}, tmp_path)
    printed = capsys.readouterr().out
    assert "| size | ms | note |" in printed and "| 2 |  | x |" in printed
    record = json.loads(path.read_text())
    assert path == tmp_path / "demo.json"
    assert record["benchmark"] == "demo" and record["rows"] == rows and record["meta"] == {"repeats": 3}
    assert record["machine"]["jax"] == jax.__version__ and record["machine"]["logical_cores"] >= 1


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_voxelization_quick(tmp_path):
    voxelization.main(["--quick", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "voxelization.json").read_text())
    rows = record["rows"]
    assert [(row["events"], row["grid"]) for row in rows] == [(1000, "5x96x48"), (10000, "5x96x48"),
                                                              (10000, "5x384x192")]
    for row in rows:
        for key in ("numpy_ms", "jax_ms", "jax_vmap_ms", "numpy_Mev_per_s", "jax_Mev_per_s", "speedup"):
            assert positive(row[key]), (key, row)
        assert row["speedup"] == pytest.approx(row["numpy_ms"] / row["jax_ms"])
        assert row["jax_Mev_per_s"] == pytest.approx(row["events"] / row["jax_ms"] / 1e3)
    assert record["meta"]["repeats"] == common.QUICK_REPEATS


def test_input_pipeline_quick(tmp_path):
    input_pipeline.main(["--quick", "--out", str(tmp_path), "--data_dir", str(tmp_path / "data")])
    record = json.loads((tmp_path / "input_pipeline.json").read_text())
    rows = {row["feed"]: row for row in record["rows"]}
    for feed in ("in_memory", "real_pipeline"):
        assert positive(rows[feed]["step_ms"]) and positive(rows[feed]["samples_per_s"])
        assert rows[feed]["p90_ms"] >= 0.5 * rows[feed]["step_ms"]
    busy = record["meta"]["busy_fraction"]
    assert busy == pytest.approx(rows["in_memory"]["step_ms"] / rows["real_pipeline"]["step_ms"])
    assert 0 < busy < 10
    assert record["meta"]["config"] == "configs/eventreid.py:smoke"
    # The prepared data is reused by a second run (the marker holds the config it was made with).
    assert (tmp_path / "data" / input_pipeline.PREPARED_FILE).is_file()


def test_pixelfade_protection_quick(tmp_path):
    pixelfade_protection.main(["--quick", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "pixelfade_protection.json").read_text())
    rows = {row["variant"]: row for row in record["rows"]}
    compiled, python = rows[pixelfade_protection.COMPILED], rows[pixelfade_protection.PYTHON]
    assert len(record["rows"]) == 2
    for row in (compiled, python):
        assert (row["case"], row["batch"], row["iterations"], row["size"]) == ("quick", 2, 6, "32x16")
        for key in ("median_s", "images_per_s", "images_per_s_excl_compile", "first_call_s"):
            assert positive(row[key]), (key, row)
        assert row["images_per_s"] == pytest.approx(row["batch"] / row["median_s"])
        assert 1 <= row["repeats"] <= common.QUICK_REPEATS
        # Both variants computed the same images (the benchmark asserts it too, before timing).
        assert 0 <= row["check_max_abs_diff"] <= 1e-4 and row["same_replacements"] is True
        # The first call compiles: JAX reports compile time within it.
        assert positive(row["first_call_compile_s"]) and row["first_call_compile_s"] < row["first_call_s"]
    assert compiled["speedup_vs_python"] == pytest.approx(python["median_s"] / compiled["median_s"])
    assert compiled["compile_in_call_s"] == 0  # later calls of the compiled function reuse its executable
    assert record["meta"]["allclose_atol"] == 1e-4 and record["meta"]["check_iterations"] == 1


def test_event_reading_quick(tmp_path):
    event_reading.main(["--quick", "--out", str(tmp_path), "--data_dir", str(tmp_path / "data")])
    record = json.loads((tmp_path / "event_reading.json").read_text())
    rows = {row["case"]: row for row in record["rows"]}
    assert list(rows) == list(event_reading.CASES)
    assert rows["import only"]["events"] == 0
    for case in event_reading.CASES[1:]:
        assert rows[case]["events"] == 200_000 and positive(rows[case]["Mev_per_s"])
        assert rows[case]["peak_rss_MB"] >= rows["import only"]["peak_rss_MB"] * 0.9
    assert rows["anon_jax iter_windows"]["windows"] == 4  # 0.2 s at 50 ms per window
    assert record["meta"]["streaming_under_target"] is True


def test_video_round_trip_quick(tmp_path):
    # A small random reconstructor: this checks the simulate -> reconstruct -> compare path, not the quality
    # (the closing note and BENCHMARKS.md quote a trained reconstructor's SSIM).
    config = e2vid.e2vid_config(base_channels=4, num_encoders=2, num_residual_blocks=1)
    variables = e2vid.E2VID(config).init(jax.random.key(0), jnp.zeros((1, 8, 8, config.num_bins)), None,
                                         train=False)
    e2vid.save_pretrained(tmp_path / "e2vid", config, variables)
    video_round_trip.main(["--quick", "--checkpoint", str(tmp_path / "e2vid"), "--out", str(tmp_path),
                           "--work_dir", str(tmp_path / "work")])
    row = json.loads((tmp_path / "video_round_trip.json").read_text())["rows"][0]
    assert row["video"] == "12 frames 96x64 @ 30 fps" and row["windows"] >= 4
    assert row["compared"] == row["windows"] - 3  # --skip 5 is capped at a quarter of the 12 frames
    assert -1 < row["ssim"] < 1 and -1 < row["ssim_mid_gray"] < 1 and positive(row["psnr"])
    frames = sorted((tmp_path / "work" / "frames").glob("frame_*.png"))
    assert len(frames) == row["windows"]
