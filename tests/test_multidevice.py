"""Data parallelism: the :smoke main job on 4 emulated CPU devices logs the losses of the 1-device run.

Every training stage (E2VID pretraining, the ReId baseline with BatchNorm, joint anonymizer + ReId training,
inversion, adaptive reconstructor, identity-leakage ReId) runs on a ("data",) mesh with the batch split over the
devices; BatchNorm statistics are taken over the global batch, so the device count must not change the numbers.
"""

import os
import subprocess
import sys

import numpy as np
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from main_runs import REPO, main_command

TRAINING_STAGES = ("e2vid", "validation", "baseline", "joint", "inversion", "adaptive", "leakage")
# A few steps per stage (ReId stages: 3 steps of 32 examples), each logged; 21 chained steps in all. Longer runs
# drift apart: float32 sums taken in another order (per-device partial sums) differ in the last bits (1e-7), and
# training on tiny batches with BatchNorm over them amplifies that 10- to 20-fold per step after a few steps
# (measured: after 6 joint steps the 1- and 4-device losses are 2e-3 apart).
SHORT_STAGES = ("--config.reconstructor.pretrain.train.log_every_steps=1",
                "--config.reconstructor.pretrain.train.num_steps=4",
                "--config.baseline.train.num_epochs=1", "--config.baseline.train.batch_size=32",
                "--config.baseline.train.log_every_steps=1",
                "--config.joint.train.num_epochs=1", "--config.joint.train.batch_size=32",
                "--config.joint.train.log_every_steps=1",
                "--config.attacks.leakage.train.num_epochs=1", "--config.attacks.leakage.train.batch_size=32",
                "--config.attacks.leakage.train.log_every_steps=1",
                "--config.attacks.inversion.log_every_steps=1", "--config.attacks.adaptive.log_every_steps=1")


def logged_scalars(tensorboard_dir) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the training stages' scalars, without timings."""
    events = event_accumulator.EventAccumulator(str(tensorboard_dir), size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    scalars = {}
    for tag in events.Tags()["tensors"]:
        values = {event.step: tensor_util.make_ndarray(event.tensor_proto) for event in events.Tensors(tag)}
        if tag.split("/")[0] in TRAINING_STAGES and not tag.endswith("steps_per_second"):
            if all(value.ndim == 0 for value in values.values()):  # not an image
                scalars[tag] = {step: float(value) for step, value in values.items()}
    return scalars


def run_smoke(workdir, num_devices: int) -> None:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}")
    result = subprocess.run(main_command("configs/eventreid.py:smoke", workdir, *SHORT_STAGES), cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-6000:]
    assert f"on {num_devices} cpu device(s)" in result.stderr


def test_four_devices_log_the_losses_of_one_device(tmp_path):
    runs = {}
    for num_devices in (1, 4):
        run_smoke(tmp_path / f"devices_{num_devices}", num_devices)
        workdir = tmp_path / f"devices_{num_devices}"
        runs[num_devices] = {**logged_scalars(workdir / "tensorboard"),
                             **logged_scalars(workdir / "reconstructor" / "tensorboard")}
    one, four = runs[1], runs[4]
    assert set(one) == set(four)
    for stage in TRAINING_STAGES:
        assert f"{stage}/loss" in one, sorted(one)
    for tag, values in one.items():
        assert set(values) == set(four[tag]), tag
        steps = sorted(values)
        np.testing.assert_allclose([four[tag][s] for s in steps], [values[s] for s in steps], rtol=1e-5,
                                   atol=1e-7, err_msg=tag)
    # Every step of every stage is compared, so the comparison covers parameter updates, not only step 1.
    assert min(len(one[f"{stage}/loss"]) for stage in TRAINING_STAGES if stage != "validation") >= 3


MODEL_AXIS_SCRIPT = """
import jax, numpy as np
from anon_jax.methods import reid_baseline
from anon_jax.models import reid as reid_models
from anon_jax.training import mesh as mesh_lib, optim
import configs.eventreid_baseline as experiment

config = experiment.get_config("smoke")
model = reid_models.build_reid_network(config.model, num_classes=3)
tx, _ = optim.make_optimizer(config.optimizer, num_steps=10, steps_per_epoch=5)
rng = np.random.default_rng(0)
batch = {"voxels": rng.normal(size=(8, 32, 16, 5)).astype(np.float32), "labels": np.arange(8, dtype=np.int32) % 3}
losses = {}
for shape in ((1,), (2, 2), (-1, 1)):
    mesh = mesh_lib.make_mesh(shape) if shape != (1,) else jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    state = mesh_lib.replicate(reid_baseline.create_state(model, tx, (32, 16, 5), jax.random.key(0)), mesh)
    step = jax.jit(reid_baseline.make_train_step(config, model, tx),
                   out_shardings=(mesh_lib.replicated(mesh), mesh_lib.replicated(mesh)))
    for _ in range(3):
        state, metrics = step(state, mesh_lib.shard_batch(batch, mesh))
    losses[shape] = float(metrics.compute()["loss"])
    print(shape, dict(mesh.shape), losses[shape])
np.testing.assert_allclose([losses[(2, 2)], losses[(-1, 1)]], [losses[(1,)]] * 2, rtol=1e-5)
print("OK")
"""


def test_a_model_axis_leaves_the_data_parallel_numbers_unchanged():
    """config.mesh_shape (2, 2) (batch over 2 devices, replicas over a 2-device "model" axis) and (-1, 1)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    result = subprocess.run([sys.executable, "-c", MODEL_AXIS_SCRIPT], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "{'data': 2, 'model': 2}" in result.stdout and "{'data': 4, 'model': 1}" in result.stdout
