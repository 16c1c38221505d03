"""AnonyNoise method: the three-optimizer pipeline step (each optimizer moves only its own network, the anonymizer
learns through both frozen networks), the synthetic action splits, and the `:smoke` main job end to end (all
stages, report, resume)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from anon_jax import losses
from anon_jax.data import anonynoise_data, anonynoise_datasets
from anon_jax.methods import anonynoise
from anon_jax.models import anonynoise as models
from anon_jax.training import optim, stages
from configs import anonynoise as anonynoise_config
from anonynoise_fixtures import random_events, write_dvsg, write_query_list
from main_runs import run_main


def tiny_batch(config, batch_size=8):
    rng = np.random.default_rng(0)
    height, width = 16, 8
    return {
        "frames": rng.poisson(1.0, size=(batch_size, height, width, 2 * config.data.num_time_bins)).astype(np.float32),
        "target": np.arange(batch_size, dtype=np.int32) % 2,
        "identity": np.repeat(np.arange(batch_size // 2, dtype=np.int32), 2),
    }


def pipeline_state(config, batch, networks):
    anonymizer, target_net, reid_net, _ = networks
    frames_shape = batch["frames"].shape[1:]
    key = jax.random.key(0)
    txs = {name: optim.make_optimizer(config.pipeline[f"{name}_optimizer"], num_steps=4, steps_per_epoch=1)[0]
           for name in ("anonymizer", "target", "reid")}
    anonymizer_params = anonynoise._init(anonymizer, key, frames_shape)["params"]
    state = {"step": jnp.zeros((), jnp.int32), "rng": jax.random.fold_in(key, 1),
             "anonymizer": {"params": anonymizer_params, "opt_state": txs["anonymizer"].init(anonymizer_params)},
             "target": anonynoise._trainable(anonynoise._init(target_net, key, frames_shape, train=False),
                                             txs["target"]),
             "reid": anonynoise._trainable(anonynoise._init(reid_net, key, frames_shape, train=False), txs["reid"])}
    return state, txs


def changed(before, after) -> bool:
    return any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before),
                                                        jax.tree_util.tree_leaves(after)))


@pytest.mark.parametrize("frozen", ["anonymizer", "target", "reid"])
def test_pipeline_optimizers_update_only_their_own_network(frozen):
    config = anonynoise_config.get_config("smoke")
    config.data.augment.max_degrees = 0.0
    # A zero learning rate freezes one network: only its own optimizer may move it, so it must stay put while the
    # other two move.
    config.pipeline[f"{frozen}_optimizer"].learning_rate = 0.0
    batch = tiny_batch(config)
    networks = anonynoise.build_networks(config, 2, 4, jnp.float32)
    state, txs = pipeline_state(config, batch, networks)
    before = jax.tree_util.tree_map(np.asarray, {name: state[name]["params"] for name in txs})
    step = jax.jit(anonynoise.make_pipeline_step(config, *networks[:3], txs))
    new_state, metrics = step(state, jax.tree_util.tree_map(jnp.asarray, batch))
    for name in txs:
        assert changed(before[name], new_state[name]["params"]) == (name != frozen), name
    values = metrics.compute()
    assert np.isfinite(values["anonymizer_loss"]) and np.isfinite(values["reid_loss"])
    assert int(new_state["step"]) == 1


def test_anonymizer_gradient_is_target_cross_entropy_minus_reid_triplet():
    # The anonymizer's update comes from CE(T(A x)) - triplet(R(A x)) at the pre-update T and R: recompute that
    # gradient independently and compare with the update Adam's first step makes (lr * sign(g) where |g| >> eps).
    config = anonynoise_config.get_config("smoke")
    config.data.augment.max_degrees = 0.0
    config.data.augment.padding = 0
    config.model.dropout = 0.0
    batch = tiny_batch(config)
    networks = anonynoise.build_networks(config, 2, 4, jnp.float32)
    anonymizer, target_net, reid_net, _ = networks
    state, txs = pipeline_state(config, batch, networks)
    new_state, _ = jax.jit(anonynoise.make_pipeline_step(config, anonymizer, target_net, reid_net, txs))(
        state, jax.tree_util.tree_map(jnp.asarray, batch))
    noise_key = jax.random.split(jax.random.fold_in(state["rng"], 0), 6)[1]

    def loss(params):
        x = anonymizer.apply({"params": params}, batch["frames"], rngs={"noise": noise_key})
        outputs = {}
        for name, net in (("target", target_net), ("reid", reid_net)):
            outputs[name], _ = net.apply({"params": state[name]["params"], "batch_stats": state[name]["batch_stats"]},
                                         x, train=True, mutable=["batch_stats"])
        return (losses.cross_entropy(outputs["target"]["logits"], batch["target"])
                - losses.batch_hard_triplet(outputs["reid"]["embed"], batch["identity"], margin=4.0,
                                            self_positive=True))

    grads = jax.grad(loss)(state["anonymizer"]["params"])
    learning_rate = config.pipeline.anonymizer_optimizer.learning_rate
    for g, old, new in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(state["anonymizer"]["params"]),
                           jax.tree_util.tree_leaves(new_state["anonymizer"]["params"])):
        g, step = np.asarray(g), np.asarray(old) - np.asarray(new)
        strong = np.abs(g) > 1e-4
        assert strong.any()
        np.testing.assert_allclose(step[strong], learning_rate * np.sign(g[strong]), rtol=1e-3)


def test_synthetic_splits_hold_out_identities_and_pick_queries(tmp_path):
    data = anonynoise_config.get_config("smoke").data
    splits, info = anonynoise_data.synthetic_splits(data, str(tmp_path / "synthetic"))
    train_ids, test_ids = set(splits["train"]["identity"]), set(splits["val"]["identity"])
    assert train_ids.isdisjoint(test_ids) and len(test_ids) == data.test_identities
    num_windows = round(data.synthetic.duration_s / data.window_s)
    per_identity = data.synthetic.num_cameras * data.synthetic.num_actions * data.synthetic.num_lighting * num_windows
    assert len(splits["val"]["frames"]) == data.test_identities * per_identity
    assert len(splits["query"]["frames"]) + len(splits["gallery"]["frames"]) == len(splits["val"]["frames"])
    # One query per (identity, camera, action) in the first lighting; every query has a valid match: its identity
    # doing another action in the gallery.
    assert len(splits["query"]["frames"]) == data.test_identities * data.synthetic.num_cameras * data.synthetic.num_actions
    for identity, action in zip(splits["query"]["identity"], splits["query"]["condition"]):
        gallery = splits["gallery"]
        assert np.any((gallery["identity"] == identity) & (gallery["condition"] != action))
    np.testing.assert_array_equal(splits["train"]["target"], splits["train"]["condition"])
    assert splits["train"]["frames"].shape[1:] == (data.synthetic.height // data.downsample,
                                                   data.synthetic.width // data.downsample, 2 * data.num_time_bins)
    assert splits["train"]["frames"].sum() > 0 and info["actions"] == ["walk", "wave"]
    all_ids = np.concatenate([splits[name]["file_id"] for name in ("train", "query", "gallery")])
    assert len(np.unique(all_ids)) == len(all_ids) == len(info["sources"])


def test_data_stage_caches_a_real_dataset_example_by_example(tmp_path):
    rng = np.random.default_rng(3)
    relpaths = ["ibmGestureTrain/user01_lab/0.npy", "ibmGestureTrain/user02_led/4.npy",
                "ibmGestureTest/user24_lab/2.npy", "ibmGestureTest/user24_natural/7.npy"]
    for relpath in relpaths:
        write_dvsg(tmp_path / "DVSGesture" / relpath, *random_events(rng, 200))
    (tmp_path / "protocol").mkdir()
    write_query_list(tmp_path / "protocol" / anonynoise_datasets.DVSG_QUERY_FILE, [relpaths[2]])
    data = anonynoise_config.get_config().data
    data.name, data.root, data.protocol_dir, data.num_time_bins = "dvsgesture", str(tmp_path / "DVSGesture"), \
        str(tmp_path / "protocol"), 2
    cached = anonynoise_data.load_prepared(anonynoise_data.prepare(data, str(tmp_path / "stage")))
    loaded = anonynoise_datasets.load_dvsgesture(data.root, data.protocol_dir, num_time_bins=2)
    assert set(cached) == {"train", "val", "query", "gallery"}
    for name, split in cached.items():
        assert isinstance(split["frames"], np.memmap) and split["frames"].shape == (len(loaded[name]["frames"]),
                                                                                    128, 128, 4)
        for key in anonynoise_data.ARRAYS:
            np.testing.assert_array_equal(split[key], loaded[name][key])
    assert json.loads((tmp_path / "stage" / "dataset_info.json").read_text())["label_maps"]["identity"] == {
        "user01": 0, "user02": 1, "user24": 2}
    assert not list((tmp_path / "stage").glob("*.tmp"))
    with pytest.raises(anonynoise_data.AnonyNoiseDataError, match="cached by an older anon_jax; delete its folder"):
        anonynoise_data.load_prepared({"paths": {"train": str(tmp_path / "stage" / "train.npz")}})


def test_smoke_main_job_runs_every_stage_and_resumes(tmp_path):
    workdir = tmp_path / "anonynoise"
    run_main("configs/anonynoise.py:smoke", workdir)
    report = json.loads((workdir / "report.json").read_text())
    rows = report["metrics"]
    assert set(rows) == {"raw data (pretrained networks)", "anonymised, pipeline attacker",
                         "anonymised, post-trained attacker", "anonymised, denoiser + attacker (inversion)"}
    for row in rows.values():
        assert 0.0 <= row["rank1"] <= 1.0 and 0.0 <= row["mAP"] <= 1.0
    assert 0.0 <= rows["raw data (pretrained networks)"]["target_accuracy"] <= 1.0
    for stage in ("data", "pretrain_target", "pretrain_reid", "pipeline", "post_reid", "post_denoise", "evaluate"):
        assert (workdir / stage / stages.DONE_FILE).is_file(), stage
    assert (workdir / "examples.png").stat().st_size > 0
    query = np.load(workdir / "data" / "query_frames.npy")
    with np.load(workdir / anonynoise.EXAMPLES_FILE) as examples:
        assert examples.files == ["raw", "anonymised", "denoised"]  # the figure's rows, top to bottom
        np.testing.assert_array_equal(examples["raw"], query[:4])
        assert examples["anonymised"].shape == examples["denoised"].shape == examples["raw"].shape
        assert not np.array_equal(examples["anonymised"], examples["raw"])
    events = event_accumulator.EventAccumulator(str(workdir / "tensorboard"))
    events.Reload()
    tags = {tag for values in events.Tags().values() if isinstance(values, list) for tag in values}
    assert {"pipeline/anonymizer_loss", "evaluation/anonymised, post-trained attacker/rank1",
            "evaluation/raw data (pretrained networks)/target_accuracy", "evaluation/examples.png"} <= tags
    # A second run finds every stage finished and rewrites the same report, rows in the same order.
    table = (workdir / "report.md").read_text()
    run_main("configs/anonynoise.py:smoke", workdir)
    assert json.loads((workdir / "report.json").read_text())["metrics"] == rows
    assert (workdir / "report.md").read_text() == table

    # The exported anonymizer attacked by another run (as for EventReIDv2): no target network, no pipeline.
    attack_dir = tmp_path / "attack"
    run_main("configs/anonynoise.py:smoke", attack_dir, f"--config.anonymizer.pretrained_dir={workdir / 'anonymizer'}",
             "--config.post.init=pretrained")
    attack = json.loads((attack_dir / "report.json").read_text())
    table = (attack_dir / "report.md").read_text()
    names = ["raw data (pretrained networks)", "anonymised, raw-trained attacker", "anonymised, post-trained attacker",
             "anonymised, denoiser + attacker (inversion)"]
    assert set(attack["metrics"]) == set(names)
    assert [table.index(f"| {name} |") for name in names] == sorted(table.index(f"| {name} |") for name in names)
    assert "target_accuracy" not in attack["metrics"]["raw data (pretrained networks)"]
    assert not (attack_dir / "pretrain_target").exists() and not (attack_dir / "pipeline").exists()
    assert attack["details"]["anonymizer"] == str(workdir / "anonymizer")
    # The same anonymizer on the same frames and noise keys: the anonymised examples are identical.
    with np.load(workdir / anonynoise.EXAMPLES_FILE) as ours, np.load(attack_dir / anonynoise.EXAMPLES_FILE) as theirs:
        np.testing.assert_array_equal(ours["anonymised"], theirs["anonymised"])


def test_attacker_init_choices_and_loaded_anonymizer_checks(tmp_path):
    config = anonynoise_config.get_config("smoke")
    trained = {"pretrain_reid": {"params": "raw"}, "pipeline": {"reid": {"params": "adversarial"}}}
    assert anonynoise._attacker_init(config, trained) == {"params": "adversarial"}
    config.post.init = "pretrained"
    assert anonynoise._attacker_init(config, trained) == {"params": "raw"}
    config.post.init = "fresh"
    assert anonynoise._attacker_init(config, trained) is None
    config.post.init = "pipeline"
    with pytest.raises(ValueError, match="use 'pretrained' or 'fresh'"):
        anonynoise._attacker_init(config, {"pretrain_reid": {}})
    config.post.init = "best"
    with pytest.raises(ValueError, match="config.post.init='best'"):
        anonynoise._attacker_init(config, trained)
    module = models.NoiseAnonymizer(num_channels=6, features=(2, 2, 2, 2, 2))
    params = jax.jit(module.init)({"params": jax.random.key(0), "noise": jax.random.key(1)},
                                  jnp.zeros((1, 4, 4, 6)))["params"]
    models.save_anonymizer(tmp_path / "anonymizer", module, params)
    config.anonymizer.pretrained_dir = str(tmp_path / "anonymizer")
    with pytest.raises(ValueError, match="for 6 channels, but config.data.num_time_bins=5 gives 10"):
        anonynoise._load_anonymizer(config, jnp.float32)
