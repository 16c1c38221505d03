"""End to end: the main job on the smoke config, killed and resumed, and on the public Event-ReId sample."""

import json
import pathlib
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/eventreid_baseline.py:smoke"


def main_command(workdir, *overrides):
    return [sys.executable, "-m", "anon_jax.main", f"--config={CONFIG}", f"--workdir={workdir}", *overrides]


def run_main(workdir, *overrides):
    result = subprocess.run(main_command(workdir, *overrides), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    return result


def test_smoke_run_killed_mid_training_resumes_and_finishes(tmp_path):
    workdir = tmp_path / "run"
    checkpoint_dir = workdir / "train" / "checkpoints"
    # Many short steps and frequent checkpoints so that the kill lands mid-training.
    overrides = ("--config.train.num_epochs=12", "--config.train.checkpoint_every_steps=2")
    process = subprocess.Popen(main_command(workdir, *overrides), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 900
    while not (checkpoint_dir.is_dir() and any(p.name.isdigit() for p in checkpoint_dir.iterdir())):
        assert process.poll() is None, process.communicate()[1][-5000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-5000:]
    assert "rerun the same command to resume" in stderr
    assert not (workdir / "report.json").exists()

    resumed = run_main(workdir, *overrides)
    assert "Resumed from checkpoint step" in resumed.stderr
    report = json.loads((workdir / "report.json").read_text())
    rows = report["metrics"]
    assert {"embed / standard AP", "embed / trapezoid AP", "pool5 / standard AP"} <= set(rows)
    for values in rows.values():
        assert 0.0 <= values["mAP"] <= 1.0 and 0.0 <= values["rank1"] <= values["rank5"] <= 1.0
    assert json.loads((workdir / "metrics.json").read_text()) == rows
    assert (workdir / "report.md").read_text().startswith("# ReId on raw event voxel grids")
    assert any((workdir / "tensorboard").iterdir())
    assert (workdir / "cmc.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((workdir / "config.json").read_text())["method"] == "reid_baseline"

    rerun = run_main(workdir, *overrides)
    for stage in ("data", "train", "evaluate"):
        assert f"Stage {stage!r} already finished" in rerun.stderr


def test_main_trains_and_evaluates_on_the_public_sample(tmp_path, event_reid_sample_dir):
    workdir = tmp_path / "sample"
    run_main(workdir, "--config.data.name=event_reid", f"--config.data.root={event_reid_sample_dir}")
    report = json.loads((workdir / "report.json").read_text())
    assert report["details"]["train_chunks"] == 30
    assert report["details"]["query_chunks"] == 13
    assert report["details"]["gallery_chunks"] == 20


def test_bad_data_root_is_a_clear_error(tmp_path):
    result = subprocess.run(main_command(tmp_path / "w", "--config.data.name=event_reid",
                                         f"--config.data.root={tmp_path / 'missing'}"),
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "config.data.root" in result.stderr
