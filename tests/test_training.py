"""Training infrastructure: resume after SIGTERM equals an uninterrupted run; NaN stops without saving."""

import os
import signal

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from clu import metrics as clu_metrics

from anon_jax.training import mesh as mesh_lib
from anon_jax.training import stages
from anon_jax.training.checkpoint import CheckpointMismatchError, Checkpoints
from anon_jax.training.loop import Preempted, create_writer, train_loop


@flax.struct.dataclass
class LossMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")


class TinyNet(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
        x = nn.Dense(8)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(1)(nn.relu(x))


MODEL = TinyNet()
TX = optax.sgd(0.1, momentum=0.9)


def init_state():
    variables = MODEL.init(jax.random.key(0), jnp.zeros((1, 3)), train=False)
    return {
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key(1),
        "net": {"params": variables["params"], "batch_stats": variables["batch_stats"],
                "opt_state": TX.init(variables["params"])},
    }


def _step(state, batch, scale):
    net = state["net"]

    def loss_fn(params):
        out, updates = MODEL.apply({"params": params, "batch_stats": net["batch_stats"]}, batch["x"],
                                   train=True, mutable=["batch_stats"])
        return jnp.mean((out[:, 0] - batch["y"]) ** 2) * scale, updates["batch_stats"]

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(net["params"])
    updates, opt_state = TX.update(grads, net["opt_state"], net["params"])
    new = {"step": state["step"] + 1, "rng": state["rng"],
           "net": {"params": optax.apply_updates(net["params"], updates), "batch_stats": stats, "opt_state": opt_state}}
    return new, LossMetrics.single_from_model_output(loss=loss)


TRAIN_STEP = jax.jit(lambda s, b: _step(s, b, 1.0))


def batches_from(step):
    while True:
        rng = np.random.default_rng(step)
        x = rng.normal(size=(8, 3)).astype(np.float32)
        yield {"x": x, "y": x.sum(axis=1)}
        step += 1


def run(workdir, num_steps, *, stop_at=None, train_step=TRAIN_STEP):
    checkpoints = Checkpoints(os.path.join(workdir, "ckpt"), save_every_steps=4)
    state = checkpoints.restore_or(init_state())

    def on_log(step, scalars):
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    state = train_loop(name="tiny", state=state, train_step=train_step,
                       batches=batches_from(int(state["step"])), num_steps=num_steps, checkpoints=checkpoints,
                       writer=create_writer(os.path.join(workdir, "tb")), log_every_steps=1, on_log=on_log)
    checkpoints.close()
    return state


def test_resume_after_sigterm_matches_uninterrupted_run(tmp_path):
    reference = run(str(tmp_path / "a"), 10)
    with pytest.raises(Preempted):
        run(str(tmp_path / "b"), 10, stop_at=6)
    assert Checkpoints(str(tmp_path / "b" / "ckpt")).latest_step() == 6
    resumed = run(str(tmp_path / "b"), 10)
    assert int(resumed["step"]) == 10
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(reference["net"]),
                           jax.device_get(resumed["net"]))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    run(str(tmp_path), 4)  # a good checkpoint at step 4
    bad_step = jax.jit(lambda s, b: _step(s, b, jnp.nan))
    with pytest.raises(FloatingPointError, match="non-finite"):
        run(str(tmp_path), 8, train_step=bad_step)
    assert Checkpoints(str(tmp_path / "ckpt")).latest_step() == 4


def test_stage_runs_once_and_reuses_outputs(tmp_path):
    calls = []

    def stage(stage_dir):
        calls.append(stage_dir)
        return {"value": 3}

    assert stages.run_stage(str(tmp_path), "s", stage) == {"value": 3}
    assert stages.run_stage(str(tmp_path), "s", stage) == {"value": 3}
    assert len(calls) == 1


def test_training_stage_restores_its_result_when_rerun(tmp_path):
    calls = []

    def stage(stage_dir):
        calls.append(stage_dir)
        return len(calls), {"info": 1}

    assert stages.run_training_stage(str(tmp_path), "t", stage) == (1, {"info": 1})
    # The rerun calls the stage again (it restores its final checkpoint) but keeps the stored outputs.
    assert stages.run_training_stage(str(tmp_path), "t", stage) == (2, {"info": 1})


def test_checkpoint_of_another_structure_is_a_clear_error(tmp_path):
    checkpoints = Checkpoints(str(tmp_path / "ckpt"))
    checkpoints.save(1, {"w": jnp.ones(3), "b": jnp.zeros(2)}, force=True)
    checkpoints.close()
    with pytest.raises(CheckpointMismatchError, match="does not fit the current config.*delete"):
        Checkpoints(str(tmp_path / "ckpt")).restore_or({"w": jnp.ones(3), "extra": jnp.zeros(1)})


def test_mesh_rejects_uneven_batch():
    mesh = mesh_lib.make_mesh((-1,))
    assert mesh.shape[mesh_lib.DATA_AXIS] == jax.device_count()
    with pytest.raises(ValueError, match="mesh_shape"):
        mesh_lib.make_mesh((jax.device_count() + 1,))
