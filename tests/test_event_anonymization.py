"""The event-anonymization method: the joint step's gradient path through the frozen reconstructor, stateful
batches, stage checks, and the main job end to end (killed and resumed; on the public sample with an imported
official-format E2VID checkpoint)."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from anon_jax.methods import event_anonymization as method
from anon_jax.models import anonymizer as anonymizer_lib
from anon_jax.models import e2vid
from anon_jax.models import reid as reid_models
from anon_jax.training import optim
from configs import eventreid
import main_runs  # tests/main_runs.py
from main_runs import REPO


def tiny_setup(**joint_overrides):
    config = eventreid.get_config("smoke")
    config.joint.update(joint_overrides)
    config.joint.optimizer.update(schedule="constant", warmup_steps=0, learning_rate=0.1)
    anonymizer = anonymizer_lib.build_anonymizer(config.anonymizer)
    reid = reid_models.build_reid_network(config.baseline.model, num_classes=3)
    module = e2vid.E2VID(e2vid.e2vid_config(base_channels=4, num_encoders=2, num_residual_blocks=1, norm="none"))
    variables = module.init(jax.random.key(1), jnp.zeros((1, 16, 16, 5)), None)
    reconstructor = method.Reconstructor(module, unroll=True)
    tx, _ = optim.make_optimizer(config.joint.optimizer, num_steps=10, steps_per_epoch=5,
                                 extra_groups={"anonymizer": 1.0})
    state = method.joint_state(config, anonymizer, reid, tx, (16, 16, 5), None)
    return config, anonymizer, reid, reconstructor, variables, tx, state


def random_batch(shape, rng=0):
    generator = np.random.default_rng(rng)
    voxels = generator.normal(size=shape + (5,)).astype(np.float32) * (generator.random(shape + (5,)) < 0.3)
    return {"voxels": jnp.asarray(voxels), "labels": jnp.asarray(generator.integers(0, 3, shape[:-2]), jnp.int32),
            "frames": jnp.asarray(generator.random(shape + (1,)), jnp.float32)}


def anonymizer_update(rec_weight, use_frames):
    config, anonymizer, reid, reconstructor, variables, tx, state = tiny_setup(random_flip=False)
    config.joint.train.random_flip = False
    config.joint.loss.update(struct_weight=0.0, rec_weight=rec_weight)
    before = jax.tree_util.tree_map(np.array, variables)
    step = method.make_joint_step(config, anonymizer, reid, reconstructor, tx, use_frames=use_frames)
    new_state, metrics = jax.jit(step)(state, random_batch((4, 16, 16)), variables)
    # The reconstructor is an argument, never part of the optimised state: its weights stay bit-identical.
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, before, variables))
    assert "reconstructor" not in new_state["params"]
    scalars = metrics.compute()
    assert all(np.isfinite(float(v)) for v in scalars.values())
    delta = jax.tree_util.tree_map(lambda a, b: np.asarray(a - b), new_state["params"]["anonymizer"],
                                   state["params"]["anonymizer"])
    return np.concatenate([d.ravel() for d in jax.tree_util.tree_leaves(delta)]), scalars


@pytest.mark.parametrize("use_frames", [True, False])
def test_gradients_reach_the_anonymizer_through_the_frozen_reconstructor(use_frames):
    without_attack, _ = anonymizer_update(0.0, use_frames)
    with_attack, scalars = anonymizer_update(1.0, use_frames)
    assert 0.0 < float(scalars["rec_loss"]) < 2.0
    # Only the reconstruction term differs between the two runs, and it moves the anonymizer: its gradient
    # reached the anonymizer through the reconstructor.
    assert np.abs(with_attack - without_attack).max() > 1e-6


def test_stateful_step_runs_on_runs_of_consecutive_windows():
    config, anonymizer, reid, reconstructor, variables, tx, state = tiny_setup(attacker="stateful", sequence_length=3)
    step = method.make_joint_step(config, anonymizer, reid, reconstructor, tx, use_frames=True)
    new_state, metrics = jax.jit(step)(state, random_batch((2, 3, 16, 16)), variables)
    assert int(new_state["step"]) == 1
    assert np.isfinite(float(metrics.compute()["loss"]))


def test_stateful_reconstruction_carries_the_state_and_stateless_does_not():
    _, _, _, reconstructor, variables, _, _ = tiny_setup()
    voxels = random_batch((2, 3, 16, 16))["voxels"]
    stateful = reconstructor.sequences(variables, voxels)
    stateless = reconstructor.windows(variables, voxels.reshape((6, 16, 16, 5))).reshape(stateful.shape)
    np.testing.assert_allclose(stateful[:, 0], stateless[:, 0], atol=1e-6)  # both start from a zero state
    assert np.abs(np.asarray(stateful[:, 1:] - stateless[:, 1:])).max() > 1e-4
    manual_state = None
    for t in range(3):
        image, manual_state = reconstructor.module.apply(variables, voxels[:, t], manual_state, train=False)
        np.testing.assert_allclose(stateful[:, t], image, atol=1e-5)


def test_sequence_starts_need_consecutive_chunks_of_one_recording():
    split = {"paths": np.array(["train/001_c1_001.txt", "train/001_c1_002.txt", "train/001_c1_003.txt",
                                "train/001_c1_005.txt", "train/001_c2_006.txt", "train/001_c2_007.txt",
                                "train/002_c2_008.txt"])}
    assert method.sequence_starts(split, 2).tolist() == [0, 1, 4]
    assert method.sequence_starts(split, 3).tolist() == [0]


def test_stateful_batches_are_runs_of_consecutive_chunks_and_resume_exactly():
    config = eventreid.get_config("smoke")
    config.joint.update(attacker="stateful", sequence_length=3)
    config.joint.train.batch_size = 6
    paths = [f"train/{i:03d}_c1_{j:03d}.txt" for i in (1, 2) for j in range(1, 6)]
    train = {"paths": np.array(paths), "labels": np.repeat(np.arange(2, dtype=np.int32), 5),
             "voxels": np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)}
    fresh = method.joint_batches(train, config, start_step=0, use_frames=False)
    batches = [next(fresh) for _ in range(4)]
    for batch in batches:
        assert batch["voxels"].shape == (2, 3, 1, 1, 1) and batch["labels"].shape == (2, 3)
        rows = batch["voxels"].reshape(2, 3)
        assert np.all(np.diff(rows, axis=1) == 1)  # consecutive chunks of one recording
        assert np.all(batch["labels"] == batch["labels"][:, :1])
    resumed = next(method.joint_batches(train, config, start_step=3, use_frames=False))
    np.testing.assert_array_equal(resumed["voxels"], batches[3]["voxels"])


def test_stage_lists_are_checked():
    assert method.check_stages(("reconstructor", "data", "joint", "evaluate"))
    with pytest.raises(ValueError, match="only .*baseline.*attacks.* may be left out"):
        method.check_stages(("reconstructor", "data", "baseline", "evaluate"))
    with pytest.raises(ValueError, match="in this order"):
        method.check_stages(("data", "reconstructor", "joint", "evaluate"))


# ----------------------------------------------------------------------------------------------------------
# End to end


CONFIG = "configs/eventreid.py:smoke"


def run_main(workdir, *overrides):
    return main_runs.run_main(CONFIG, workdir, *overrides)


REPORT_FILES = ("report.json", "report.md", "metrics.json", "cmc.png", "reconstructions.png", "privacy_utility.png")


def test_smoke_run_of_all_stages_killed_in_joint_training_resumes_and_reports(tmp_path):
    workdir = tmp_path / "run"
    checkpoint_dir = workdir / "joint" / "checkpoints"
    overrides = ("--config.joint.train.num_epochs=6", "--config.joint.train.checkpoint_every_steps=2")
    main_runs.preempt_after_first_checkpoint(CONFIG, workdir, checkpoint_dir, tmp_path / "killed.log", *overrides)
    assert not (workdir / "report.json").exists()

    resumed = run_main(workdir, *overrides)
    assert "Resumed from checkpoint step" in resumed.stderr
    for stage in ("reconstructor", "data", "baseline"):
        assert f"Stage {stage!r} already finished" in resumed.stderr
    for name in REPORT_FILES:
        assert (workdir / name).stat().st_size > 0, name
    for name in REPORT_FILES[3:]:
        assert (workdir / name).read_bytes().startswith(b"\x89PNG"), name
    report = json.loads((workdir / "report.json").read_text())
    rows = report["metrics"]
    for prefix in ("raw events", "anonymised events"):
        values = rows[f"ReId {prefix} / embed / standard AP"]
        assert 0.0 <= values["rank1"] <= values["rank5"] <= 1.0
    attacks = ["raw events -> reconstructor", "anonymised -> reconstructor", "inversion attack -> reconstructor",
               "anonymised -> adaptive reconstructor"]
    for attack in attacks:
        for mode in ("stateless", "stateful"):
            values = rows[f"{attack} ({mode})"]
            assert -1.0 <= values["SSIM"] <= 1.0 and values["MSE"] >= 0
            assert 0.0 <= values["identity rank-1"] <= 1.0
    # The default I_ref is the raw voxels' reconstruction; the synthetic data adds the ground-truth column.
    assert report["details"]["reference"] == "reconstruction"
    assert rows["raw events -> reconstructor (stateless)"]["SSIM"] == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= rows["anonymised -> reconstructor (stateless)"]["SSIM vs ground truth"] <= 1.0
    assert "ground truth (leakage upper bound)" in rows
    assert set(report["figures"]) == set(REPORT_FILES[3:])
    assert "![reconstructions.png](reconstructions.png)" in (workdir / "report.md").read_text()
    events = event_accumulator.EventAccumulator(str(workdir / "tensorboard"))
    events.Reload()
    tags = {tag for values in events.Tags().values() if isinstance(values, list) for tag in values}
    assert {"joint/reference_raw_anonymised", "evaluation/reconstructions.png", "joint/rec_loss",
            "evaluation/anonymised -> reconstructor (stateless)/SSIM"} <= tags
    module, params, voxel = anonymizer_lib.load_pretrained(workdir / "anonymizer")
    assert (voxel["height"], voxel["width"], voxel["num_bins"]) == (32, 16, 5)

    rerun = run_main(workdir, *overrides)
    for stage in ("reconstructor", "data", "baseline", "joint", "inversion", "adaptive", "leakage", "evaluate"):
        assert f"Stage {stage!r} already finished" in rerun.stderr, stage

    # The deployment command on one raw recording of the run's data.
    recording = workdir / "data" / "synthetic_raw" / "002" / "cam01" / "events.txt"
    out = tmp_path / "anonymised.npz"
    subprocess.run([sys.executable, "-m", "anon_jax.anonymize", f"--checkpoint={workdir}", f"--events={recording}",
                    f"--out={out}"], cwd=REPO, check=True, capture_output=True, text=True, timeout=600)
    with np.load(out) as written:
        assert written["voxels"].shape[1:] == (32, 16, 5)
        assert 0.0 <= written["voxels"].min() and written["voxels"].max() <= 1.0  # the published sigmoid output
        assert len(written["voxels"]) == len(written["t_start"]) > 5


def test_pipeline_runs_on_the_public_sample_with_an_imported_official_checkpoint(tmp_path, event_reid_sample_dir):
    from test_e2vid import save_published, torch_e2vid  # the PyTorch E2VID of the converter's parity tests

    stored = {"num_bins": 5, "skip_type": "sum", "recurrent_block_type": "convlstm", "num_encoders": 3,
              "base_num_channels": 4, "num_residual_blocks": 1, "norm": "BN", "use_upsample_conv": False}
    model = torch_e2vid(dict(e2vid.e2vid_config(base_channels=4, num_residual_blocks=1, norm="BN")), seed=0)
    checkpoint = tmp_path / "E2VID_tiny.pth.tar"
    save_published(model, checkpoint, "E2VIDRecurrent", stored)
    workdir = tmp_path / "sample"
    run_main(workdir, "--config.data.name=event_reid", f"--config.data.root={event_reid_sample_dir}",
             f"--config.reconstructor.path={checkpoint}")
    report = json.loads((workdir / "report.json").read_text())
    assert report["details"]["reference"] == "reconstruction"
    assert report["details"]["reconstructor"].startswith("imported from")
    assert report["details"]["query_chunks"] == 13 and report["details"]["gallery_chunks"] == 20
    assert "not consecutive" in report["details"]["attack_windows"]
    for name in REPORT_FILES:
        assert (workdir / name).is_file(), name
