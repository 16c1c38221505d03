"""Data parallelism: a train step on a 4-device CPU mesh gives the loss and update of 1 device."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, numpy as np, ml_collections
    from jax.sharding import Mesh
    from anon_jax.methods import reid_baseline
    from anon_jax.models import reid as reid_models
    from anon_jax.training import mesh as mesh_lib, optim
    import configs.eventreid_baseline as experiment

    assert jax.device_count() == 4, jax.devices()
    config = experiment.get_config("smoke")
    config.train.random_flip = False
    config.loss.triplet_weight = 1.0  # exercise the triplet path too
    config.optimizer.warmup_steps = 0  # a real parameter update in the first step
    model = reid_models.build_reid_network(config.model, num_classes=3)
    tx, _ = optim.make_optimizer(config.optimizer, num_steps=10, steps_per_epoch=5)
    rng = np.random.default_rng(0)
    batch = {"voxels": rng.normal(size=(8, 32, 16, 5)).astype(np.float32),
             "labels": np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)}
    step = reid_baseline.make_train_step(config, model, tx)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = Mesh(np.array(devices), (mesh_lib.DATA_AXIS,))
        state = reid_baseline.create_state(model, tx, (32, 16, 5), jax.random.key(0))
        init_params = jax.device_get(state["reid"]["params"])
        state = mesh_lib.replicate(state, mesh)
        new_state, metrics = jax.jit(step)(state, mesh_lib.shard_batch(batch, mesh))
        computed = metrics.compute()
        assert float(computed["triplet"]) > 0, computed
        results.append((float(computed["loss"]), jax.device_get(new_state["reid"])))
    (loss1, reid1), (loss4, reid4) = results
    print("losses", loss1, loss4)
    np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
    # Per-device BatchNorm statistics (batch 2 each) would change the loss by far more than these tolerances;
    # what remains is float32 summation order (running means near zero are the least exact).
    for a, b in zip(jax.tree_util.tree_leaves(reid1), jax.tree_util.tree_leaves(reid4)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()), reid1["params"], init_params)
    assert max(jax.tree_util.tree_leaves(moved)) > 1e-3, "the step did not update the parameters"
    print("OK")
""")


def test_four_device_mesh_matches_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
