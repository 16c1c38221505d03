"""End to end: the main job on the smoke config, killed and resumed, and on the public Event-ReId sample."""

import json
import subprocess

import main_runs  # tests/main_runs.py
from main_runs import REPO

CONFIG = "configs/eventreid_baseline.py:smoke"


def run_main(workdir, *overrides):
    return main_runs.run_main(CONFIG, workdir, *overrides, timeout=900)


def test_smoke_run_killed_mid_training_resumes_and_finishes(tmp_path):
    workdir = tmp_path / "run"
    checkpoint_dir = workdir / "train" / "checkpoints"
    # Many short steps and frequent checkpoints so that the kill lands mid-training.
    overrides = ("--config.train.num_epochs=12", "--config.train.checkpoint_every_steps=2")
    main_runs.preempt_after_first_checkpoint(CONFIG, workdir, checkpoint_dir, tmp_path / "killed.log", *overrides)
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
    result = subprocess.run(main_runs.main_command(CONFIG, tmp_path / "w", "--config.data.name=event_reid",
                                         f"--config.data.root={tmp_path / 'missing'}"),
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "config.data.root" in result.stderr
