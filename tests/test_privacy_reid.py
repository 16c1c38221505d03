"""privacy-reid: the upgradation rule on scripted validations, the gradients of the baseline and full training
steps against an independent recomputation, config checks, and the `:smoke` main job end to end with a resume
from a validation-boundary checkpoint."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from anon_jax.data import image_data
from anon_jax.methods import privacy_reid
from anon_jax.models import pix2pix
from anon_jax.training import optim, stages
from configs import privacy_reid as privacy_reid_config
from main_runs import run_main

UPGRADE = ml_collections.ConfigDict({"psnr_tolerance": 1.0, "ssim_tolerance": 0.05, "min_rank1": 0.5})


def _validation(rank1, psnr_protected=14.0, ssim_protected=0.30, psnr_desensitized=15.0, ssim_desensitized=0.30):
    return {"rank1": rank1, "psnr_protected": psnr_protected, "ssim_protected": ssim_protected,
            "psnr_desensitized": psnr_desensitized, "ssim_desensitized": ssim_desensitized}


def test_upgrade_decision_on_a_scripted_validation_sequence():
    record = {"best_rank1": 0.0, "snapshot_rank1": UPGRADE.min_rank1}
    script = [
        # (validation, anonymous_enough, new_best, use_snapshot, replace_snapshot)
        (_validation(0.40), True, True, False, False),  # anonymous but below min_rank1: keep the desensitised target
        (_validation(0.60), True, True, True, True),  # first snapshot
        (_validation(0.70, psnr_protected=16.0), False, False, False, False),  # 16 >= 15 + 1: too close to raw
        (_validation(0.55), True, False, True, False),  # usable, but the 0.60 snapshot stays
        (_validation(0.65, ssim_protected=0.36), False, False, False, False),  # 0.36 >= 0.30 + 0.05
        (_validation(0.65, psnr_protected=15.99, ssim_protected=0.349), True, True, True, True),  # just inside
        (_validation(0.65), True, False, True, False),  # a tie replaces nothing
    ]
    for step, (metrics, anonymous, new_best, use, replace) in enumerate(script):
        decision = privacy_reid.upgrade_decision(record, metrics, UPGRADE)
        assert (decision["anonymous_enough"], decision["new_best"], decision["use_snapshot"],
                decision["replace_snapshot"]) == (anonymous, new_best, use, replace), step
        record = {key: decision[key] for key in record}
    assert record == {"best_rank1": 0.65, "snapshot_rank1": 0.65}


# ------------------------------------------------------------------------------------------- training steps
def _sgd_config(config, section):
    """Plain SGD with learning rate 1 for every network of `section`: the update is minus the gradient."""
    for name in [key for key in section if key.endswith("_optimizer")]:
        section[name] = optim.optimizer_config(name="sgd", learning_rate=1.0, momentum=0.0, weight_decay=0.0,
                                               schedule="constant", warmup_steps=0)
    config.loss.centre_lr = config.loss.centre_weight  # the centres then step by minus their own gradient too


@pytest.fixture(scope="module")
def tiny():
    config = privacy_reid_config.get_config("smoke")
    _sgd_config(config, config.baseline)
    _sgd_config(config, config.full)
    rng = np.random.default_rng(0)
    batch = {"images": jnp.asarray(rng.integers(0, 256, size=(8, 64, 32, 3), dtype=np.uint8)),
             "labels": jnp.asarray(np.repeat(np.arange(4), 2).astype(np.int32))}
    nets = privacy_reid.build_networks(config, 4, jnp.float32)
    return config, batch, nets


def _train(net, variables, x):
    return net.apply(variables, x, train=True, mutable=["batch_stats"])[0]


def _reid(config, net, variables, x, labels, centres):
    return privacy_reid.reid_loss(config, _train(net, variables, x), labels, centres)[0]


def _assert_stepped_by_minus(grads, before, after):
    for g, old, new in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(before),
                           jax.tree_util.tree_leaves(after)):
        # float32 sums in another order (jitted, fused) differ by ~1e-5 of the leaf's scale; a wrong term is O(1).
        g = np.asarray(g)
        np.testing.assert_allclose(np.asarray(old) - np.asarray(new), g, rtol=1e-3, atol=2e-4 * np.abs(g).max() + 1e-7)


def test_baseline_step_gradient_is_reid_on_raw_plus_reid_on_desensitized(tiny):
    config, batch, nets = tiny
    txs = {name: optim.make_optimizer(config.baseline.reid_optimizer, num_steps=10, steps_per_epoch=5)[0]
           for name in privacy_reid.BASELINE_NETWORKS}
    state = privacy_reid.init_baseline_state(config, nets, txs, (64, 32, 3), 4)
    new_state, _ = jax.jit(privacy_reid.make_baseline_step(config, nets, txs))(state, batch)
    raw, desensitized = privacy_reid._training_views(config, jax.random.fold_in(state["rng"], 0), batch["images"])
    assert not np.allclose(raw, desensitized)
    reid = state["reid"]

    def loss(params, centres):
        variables = {"params": params, "batch_stats": reid["batch_stats"]}
        return sum(_reid(config, nets["reid"], variables, x, batch["labels"], centres) for x in (raw, desensitized))

    grads = jax.grad(loss, argnums=(0, 1))(reid["params"], state["centres"])
    _assert_stepped_by_minus(grads[0], reid["params"], new_state["reid"]["params"])
    _assert_stepped_by_minus(grads[1], state["centres"], new_state["centres"])


@pytest.mark.parametrize("upgraded", [False, True])
def test_full_step_gradients_match_an_independent_recomputation(tiny, upgraded):
    # Every network's update is minus its gradient (SGD, lr 1): recompute each gradient from scratch (G and G_R
    # forward again inside the loss, no VJP reuse) and compare. G must get gradient from every term, the recovery
    # L1 included; the GAN terms use the discriminators as updated in the same step.
    config, batch, nets = tiny
    txs = {name: optim.make_optimizer(config.full[f"{name}_optimizer"], num_steps=10, steps_per_epoch=5)[0]
           for name in privacy_reid.FULL_NETWORKS}
    state = privacy_reid.init_full_state(config, nets, txs, (64, 32, 3), 4, snapshot_rank1=0.5)
    if upgraded:
        snapshot = jax.tree_util.tree_map(lambda x: x * 1.1, state["snapshot"])
        state = {**state, "snapshot": snapshot, "upgrade": {**state["upgrade"], "use_snapshot": jnp.asarray(True)}}
    new_state, metrics = jax.jit(privacy_reid.make_full_step(config, nets, txs))(state, batch)
    assert float(metrics.compute()["upgraded"]) == float(upgraded)
    view_key = jax.random.split(jax.random.fold_in(state["rng"], 0), 3)[0]
    raw, classical = privacy_reid._training_views(config, view_key, batch["images"])
    target = nets["generator"].apply(state["snapshot"], raw, train=False) if upgraded else classical
    labels = batch["labels"]
    stats = {name: state[name]["batch_stats"] for name in privacy_reid.FULL_NETWORKS}

    def images(g_params, r_params):
        protected = _train(nets["generator"], {"params": g_params, "batch_stats": stats["generator"]}, raw)
        return protected, _train(nets["recovery"], {"params": r_params, "batch_stats": stats["recovery"]}, protected)

    protected, recovered = jax.lax.stop_gradient(images(state["generator"]["params"], state["recovery"]["params"]))

    def discriminator(name, params, pair):
        return _train(nets[name], {"params": params, "batch_stats": stats[name]}, jnp.concatenate(pair, -1))

    def d_loss(d1, d2):
        return (pix2pix.gan_loss(discriminator("disc_anonymizer", d1, (raw, protected)), False)
                + pix2pix.gan_loss(discriminator("disc_anonymizer", d1, (raw, target)), True)
                + pix2pix.gan_loss(discriminator("disc_recovery", d2, (protected, recovered)), False)
                + pix2pix.gan_loss(discriminator("disc_recovery", d2, (protected, raw)), True))

    d_grads = jax.grad(d_loss, argnums=(0, 1))(state["disc_anonymizer"]["params"], state["disc_recovery"]["params"])
    _assert_stepped_by_minus(d_grads[0], state["disc_anonymizer"]["params"], new_state["disc_anonymizer"]["params"])
    _assert_stepped_by_minus(d_grads[1], state["disc_recovery"]["params"], new_state["disc_recovery"]["params"])

    def g_loss(g_params, r_params, c_params, centres):
        protected, recovered = images(g_params, r_params)
        gan = (pix2pix.gan_loss(discriminator("disc_anonymizer", new_state["disc_anonymizer"]["params"],
                                              (raw, protected)), True)
               + pix2pix.gan_loss(discriminator("disc_recovery", new_state["disc_recovery"]["params"],
                                                (protected, recovered)), True))
        c_variables = {"params": c_params, "batch_stats": stats["reid"]}
        return (gan + 100 * jnp.mean(jnp.abs(protected - target)) + 100 * jnp.mean(jnp.abs(recovered - raw))
                + _reid(config, nets["reid"], c_variables, raw, labels, centres)
                + _reid(config, nets["reid"], c_variables, protected, labels, centres))

    grads = jax.grad(g_loss, argnums=(0, 1, 2, 3))(state["generator"]["params"], state["recovery"]["params"],
                                                   state["reid"]["params"], state["centres"])
    for grad, name in zip(grads[:3], ("generator", "recovery", "reid")):
        _assert_stepped_by_minus(grad, state[name]["params"], new_state[name]["params"])
    _assert_stepped_by_minus(grads[3], state["centres"], new_state["centres"])
    # The snapshot is frozen: the step never changes it.
    for old, new in zip(jax.tree_util.tree_leaves(state["snapshot"]), jax.tree_util.tree_leaves(new_state["snapshot"])):
        np.testing.assert_array_equal(old, new)


# ---------------------------------------------------------------------------------------------------- configs
def test_config_errors_name_the_field(tmp_path):
    config = privacy_reid_config.get_config("smoke")
    config.data.validation_split = False
    with pytest.raises(ValueError, match="config.data.validation_split"):
        privacy_reid.train_and_evaluate(config, str(tmp_path))
    data = image_data.image_data_config()
    data.name = "cuhk03_detected"
    data.root = str(tmp_path)
    with pytest.raises(image_data.ImageDataError, match="validation_split"):
        image_data.prepare(data, str(tmp_path / "stage"))
    data.name, data.root = "market1501", ""
    with pytest.raises(image_data.ImageDataError, match="config.data.root"):
        image_data.prepare(data, str(tmp_path / "stage"))


# ------------------------------------------------------------------------------------------------- main job
def test_smoke_main_job_runs_every_stage_and_resumes_at_a_validation(tmp_path):
    workdir = tmp_path / "privacy_reid"
    # Checkpoints only at the validation boundaries and the end: the last two kept are the last boundary and the
    # end, so deleting the end makes the rerun resume at a boundary whose validation has not been recorded.
    overrides = ("--config.full.checkpoint_every_steps=1000",)
    run_main("configs/privacy_reid.py:smoke", workdir, *overrides)
    report = json.loads((workdir / "report.json").read_text())
    rows = report["metrics"]
    names = ["C baseline (AGW on raw + blur)", "full model (GCR + upgradation)", "classical blur (images)",
             "recovered by G_R (images)"]
    assert set(rows) == set(names)
    table = (workdir / "report.md").read_text()
    assert [table.index(f"| {name} |") for name in names] == sorted(table.index(f"| {name} |") for name in names)
    for name in names[:2]:
        assert {f"rank1 {setting}" for setting in privacy_reid.SETTINGS} <= set(rows[name])
        assert all(0.0 <= rows[name][f"mAP {setting}"] <= 1.0 for setting in privacy_reid.SETTINGS)
    # The baseline's protected images are the desensitised ones.
    baseline = rows["C baseline (AGW on raw + blur)"]
    assert baseline["PSNR protected (dB)"] == rows["classical blur (images)"]["PSNR protected (dB)"]
    for stage in ("data", "baseline", "full", "evaluate"):
        assert (workdir / stage / stages.DONE_FILE).is_file(), stage
    validations = json.loads((workdir / "full" / privacy_reid.VALIDATIONS_FILE).read_text())
    assert [record["step"] for record in validations] == report["details"]["stages"]["full"]["boundaries"]
    assert len(validations) == 2
    assert report["details"]["stages"]["full"]["min_rank1"] == \
        report["details"]["stages"]["baseline"]["validation"]["rank1"]
    with np.load(workdir / privacy_reid.EXAMPLES_FILE) as examples:
        assert examples.files == ["raw", "desensitized", "protected", "recovered"]
        query = np.load(workdir / "data" / "query_images.npy")
        np.testing.assert_array_equal(examples["raw"], query[:len(examples["raw"])] / 255.0)
    assert (workdir / privacy_reid.GRID_FILE).stat().st_size > 0
    events = event_accumulator.EventAccumulator(str(workdir / "tensorboard"))
    events.Reload()
    tags = {tag for values in events.Tags().values() if isinstance(values, list) for tag in values}
    assert {"full/l1_protected", "baseline/reid_raw", f"evaluation/{privacy_reid.GRID_FILE}",
            "evaluation/full model (GCR + upgradation)/rank1 raw->protected"} <= tags

    # Drop the final checkpoint and everything after the full stage: the rerun restores the last boundary,
    # validates there again and must reach the same decisions, parameters and report.
    checkpoints = workdir / "full" / "checkpoints"
    steps = sorted(int(path.name) for path in checkpoints.iterdir() if path.name.isdigit())
    assert steps[-2] == validations[-1]["step"]
    shutil.rmtree(checkpoints / str(steps[-1]))
    for path in (workdir / "full" / stages.DONE_FILE, workdir / "report.json"):
        path.unlink()
    shutil.rmtree(workdir / "evaluate")
    run_main("configs/privacy_reid.py:smoke", workdir, *overrides)
    assert json.loads((workdir / "full" / privacy_reid.VALIDATIONS_FILE).read_text()) == validations
    assert json.loads((workdir / "report.json").read_text())["metrics"] == rows
