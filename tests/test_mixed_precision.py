"""bfloat16 compute: the config value's resolution, and every model computing its convolutions in bfloat16 while
its parameters, batch statistics, recurrent state, outputs and a ReId training step's optimizer state stay float32.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import configs.e2vid_pretrain as e2vid_pretrain
import configs.eventreid as eventreid
import configs.eventreid_baseline as eventreid_baseline
from anon_jax.methods import reid_baseline
from anon_jax.models import anonymizer, e2vid, reid
from anon_jax.training import optim, precision

BF16 = jnp.dtype(jnp.bfloat16)
F32 = jnp.dtype(jnp.float32)


def floating_dtypes(tree) -> set:
    leaves = jax.tree_util.tree_leaves(tree)
    return {jnp.dtype(leaf.dtype) for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)}


def primitive_input_dtypes(jaxpr, primitive: str, min_rank: int = 0) -> list:
    """Input dtypes of every `primitive` equation whose first input has rank >= `min_rank`, in a jaxpr and its
    sub-jaxprs (jit, scan, custom_jvp)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == primitive and eqn.invars[0].aval.ndim >= min_rank:
            found.append({jnp.dtype(var.aval.dtype) for var in eqn.invars})
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(item, "jaxpr", item)
                if hasattr(inner, "eqns"):
                    found += primitive_input_dtypes(inner, primitive, min_rank)
    return found


def conv_kernel_count(params) -> int:
    return sum(leaf.ndim == 4 for leaf in jax.tree_util.tree_leaves(params))


def check_bfloat16_convolutions(fn, variables, *args):
    """Every convolution of `fn` runs on bfloat16 operands, one per 4-D kernel (none falls back to float32); a
    convolution is XLA's or a product of NHWC patches with a kernel (layers.patch_conv)."""
    jaxpr = jax.make_jaxpr(fn)(variables, *args).jaxpr
    convs = primitive_input_dtypes(jaxpr, "conv_general_dilated") + primitive_input_dtypes(jaxpr, "dot_general", 4)
    assert len(convs) == conv_kernel_count(variables["params"]) > 0
    assert all(dtypes == {BF16} for dtypes in convs), convs


# ----------------------------------------------------------------------------------------------------------
# compute_dtype


@pytest.mark.parametrize("name, backend, expected", [
    ("float32", "gpu", F32), ("bfloat16", "cpu", BF16), ("auto", "cpu", F32), ("auto", "gpu", BF16),
    ("auto", "tpu", BF16),
])
def test_compute_dtype_resolution(monkeypatch, name, backend, expected):
    monkeypatch.setattr(precision.jax, "default_backend", lambda: backend)
    assert precision.compute_dtype(name) == expected


def test_auto_is_float32_on_this_cpu():
    assert jax.default_backend() == "cpu" and precision.compute_dtype("auto") == F32


@pytest.mark.parametrize("name", ["float16", "bf16", "", None])
def test_unknown_compute_dtype_names_the_field_and_the_choices(name):
    with pytest.raises(ValueError, match=r"config\.baseline\.compute_dtype=.*'float32', 'bfloat16', 'auto'"):
        precision.compute_dtype(name, field="config.baseline.compute_dtype")
    with pytest.raises(precision.ComputeDtypeError, match=r"^config\.compute_dtype="):
        precision.compute_dtype(name)


def test_every_runnable_config_defaults_to_auto_and_the_main_job_has_one_setting():
    for module, variants in ((eventreid, (None, "smoke", "paper")), (eventreid_baseline, (None, "smoke", "paper")),
                             (e2vid_pretrain, (None, "smoke", "lightweight"))):
        for variant in variants:
            assert module.get_config(variant).compute_dtype == "auto"
    config = eventreid.get_config("smoke")
    config.compute_dtype = "bfloat16"  # as --config.compute_dtype=bfloat16 does
    assert config.reconstructor.pretrain.compute_dtype == "bfloat16"


# ----------------------------------------------------------------------------------------------------------
# Models (variables filled with NumPy values: compiling random initialisers costs seconds per layer on CPU)


VOXELS = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 5)), jnp.float32)


def numpy_variables(module, *args, **kwargs):
    """(variables, their abstract shapes and dtypes as module.init makes them): N(0, 1/fan_in) kernels, biases
    and scales near 0 and 1, running statistics at their start (mean 0, var 1)."""
    abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("mean", "var"):
            value = np.full(leaf.shape, float(name == "var"))
        elif name in ("scale", "bias"):
            value = float(name == "scale") + 0.1 * rng.normal(size=leaf.shape)
        else:
            value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract), abstract


@pytest.mark.parametrize("make", [
    lambda dtype: anonymizer.PublishedAnonymizer(num_bins=5, dtype=dtype),
    lambda dtype: anonymizer.ResidualUNet(out_channels=5, base_features=4, num_levels=2, dtype=dtype),
], ids=["published", "residual_unet"])
def test_anonymizers_compute_in_bfloat16_with_float32_params_and_output(make):
    full, mixed = make(jnp.float32), make(jnp.bfloat16)
    variables, abstract = numpy_variables(mixed, VOXELS)
    assert floating_dtypes(abstract) == {F32}
    check_bfloat16_convolutions(mixed.apply, variables, VOXELS)
    out_mixed = jax.jit(mixed.apply)(variables, VOXELS)
    out_full = jax.jit(full.apply)(variables, VOXELS)
    assert out_mixed.dtype == F32 and out_mixed.shape == VOXELS.shape
    np.testing.assert_allclose(out_mixed, out_full, atol=0.015)
    assert not np.array_equal(out_mixed, out_full)  # it really computed in bfloat16


def test_build_anonymizer_passes_the_dtype():
    for kind in anonymizer.KINDS:
        module = anonymizer.build_anonymizer(anonymizer.anonymizer_config(kind=kind), dtype=jnp.bfloat16)
        assert module.dtype == jnp.bfloat16


def test_e2vid_convlstm_batchnorm_computes_in_bfloat16_with_float32_variables_state_and_image():
    config = ml_collections.FrozenConfigDict(e2vid.e2vid_config(base_channels=4, num_encoders=2))
    full, mixed = e2vid.E2VID(config), e2vid.E2VID(config, dtype=jnp.bfloat16)
    variables, abstract = numpy_variables(mixed, VOXELS)
    assert floating_dtypes(abstract) == {F32}
    state = jax.tree_util.tree_map(lambda s: s + 0.5, e2vid.initial_state(config, 2, 8, 8))

    def train_apply(module):
        return lambda v, x, s: module.apply(v, x, s, train=True, mutable=["batch_stats"])

    check_bfloat16_convolutions(train_apply(mixed), variables, VOXELS, state)
    (image, new_state), updates = jax.jit(train_apply(mixed))(variables, VOXELS, state)
    (image_full, new_state_full), updates_full = jax.jit(train_apply(full))(variables, VOXELS, state)
    assert image.dtype == F32 and floating_dtypes((new_state, updates)) == {F32}
    np.testing.assert_allclose(image, image_full, atol=0.03)
    for got, want in zip(jax.tree_util.tree_leaves((new_state, updates)),
                         jax.tree_util.tree_leaves((new_state_full, updates_full))):
        np.testing.assert_allclose(got, want, atol=0.02, rtol=0.02)


def test_e2vid_convgru_sequence_scan_runs_in_bfloat16():
    """lax.scan needs one carry dtype: the bfloat16 model's recurrent state is float32 like the zero start."""
    config = ml_collections.FrozenConfigDict(e2vid.e2vid_config(
        base_channels=4, num_encoders=2, recurrent_block="convgru", norm="IN", decoder="upsample_conv"))
    full, mixed = e2vid.E2VID(config), e2vid.E2VID(config, dtype=jnp.bfloat16)
    variables, abstract = numpy_variables(mixed, VOXELS)
    assert floating_dtypes(abstract) == {F32}
    check_bfloat16_convolutions(lambda v, x: mixed.apply(v, x, None), variables, VOXELS)
    sequence = jnp.stack([VOXELS, -VOXELS, 0.5 * VOXELS])
    images, final_state = e2vid.run_sequence(mixed, variables, sequence)
    images_full, final_state_full = e2vid.run_sequence(full, variables, sequence)
    assert images.dtype == F32 and floating_dtypes(final_state) == {F32}
    np.testing.assert_allclose(images, images_full, atol=0.02)
    for got, want in zip(jax.tree_util.tree_leaves(final_state), jax.tree_util.tree_leaves(final_state_full)):
        np.testing.assert_allclose(got, want, atol=0.02)


def test_saved_models_are_float32_and_load_in_any_dtype(tmp_path):
    """save_pretrained stores float32 whatever the compute dtype; load_pretrained picks the compute dtype."""
    config = anonymizer.anonymizer_config(kind="residual_unet", base_features=4)
    params = numpy_variables(anonymizer.build_anonymizer(config, dtype=jnp.bfloat16), VOXELS)[0]["params"]
    voxel = dict(num_bins=5, height=8, width=8, partition_mode="count", chunk_duration=None, chunk_count=100)
    anonymizer.save_pretrained(tmp_path / "anonymizer", config, params, voxel=voxel)
    module, loaded, _ = anonymizer.load_pretrained(tmp_path / "anonymizer", dtype=jnp.bfloat16)
    assert module.dtype == jnp.bfloat16 and floating_dtypes(loaded) == {F32}
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)

    e2vid_config = e2vid.e2vid_config(base_channels=4, num_encoders=2)
    variables = numpy_variables(e2vid.E2VID(ml_collections.FrozenConfigDict(e2vid_config), dtype=jnp.bfloat16),
                                VOXELS)[0]
    e2vid.save_pretrained(tmp_path / "e2vid", e2vid_config, variables)
    module, loaded = e2vid.load_pretrained(tmp_path / "e2vid", dtype=jnp.bfloat16)
    assert module.dtype == jnp.bfloat16 and floating_dtypes(loaded) == {F32}
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, variables)
    assert e2vid.load_pretrained(tmp_path / "e2vid")[0].dtype == jnp.float32


def test_reid_network_computes_in_bfloat16_with_float32_outputs_and_statistics():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 32, 16, 5)), jnp.float32)
    full = reid.ReIdNetwork(18, 6, width=8, head="bnneck")
    mixed = full.clone(dtype=jnp.bfloat16)
    variables, abstract = numpy_variables(mixed, x, train=False)
    assert floating_dtypes(abstract) == {F32}

    def train_apply(module):
        return lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"])

    check_bfloat16_convolutions(train_apply(mixed), variables, x)
    dots = primitive_input_dtypes(jax.make_jaxpr(train_apply(mixed))(variables, x).jaxpr, "dot_general")
    assert dots and all(dtypes == {BF16} for dtypes in dots)  # the classifier too
    _, updates = jax.jit(train_apply(mixed))(variables, x)
    _, updates_full = jax.jit(train_apply(full))(variables, x)
    assert floating_dtypes(updates) == {F32}
    for got, want in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(updates_full)):
        np.testing.assert_allclose(got, want, atol=0.02, rtol=0.05)
    # Outputs in evaluation mode: a training-mode BatchNorm over 4 examples divides by tiny batch deviations of
    # some features, which magnifies any rounding.
    outputs = jax.jit(lambda v, x: mixed.apply(v, x, train=False))(variables, x)
    outputs_full = jax.jit(lambda v, x: full.apply(v, x, train=False))(variables, x)
    assert {name: value.dtype for name, value in outputs.items()} == {"logits": F32, "embed": F32, "pool5": F32}
    for name in outputs:
        scale = float(np.abs(outputs_full[name]).max())
        np.testing.assert_allclose(outputs[name], outputs_full[name], atol=0.03 * scale)


def test_reid_training_step_keeps_params_and_optimizer_state_float32():
    config = eventreid_baseline.get_config("smoke")
    config.compute_dtype = "bfloat16"
    config.optimizer.warmup_steps = 0  # a first step that moves the parameters
    input_shape = (config.data.height, config.data.width, config.data.num_bins)
    rng = np.random.default_rng(3)
    batch = {"voxels": jnp.asarray(rng.normal(size=(config.train.batch_size, *input_shape)), jnp.float32),
             "labels": jnp.repeat(jnp.arange(config.train.batch_size // config.train.pk_instances),
                                  config.train.pk_instances)}
    tx, _ = optim.make_optimizer(config.optimizer, num_steps=10, steps_per_epoch=5)
    results = {}
    for compute_dtype in (precision.compute_dtype(config.compute_dtype), jnp.float32):
        model = reid.build_reid_network(config.model, num_classes=6, dtype=compute_dtype)
        variables, abstract = numpy_variables(model, batch["voxels"][:1], train=False)
        assert floating_dtypes(abstract) == {F32}
        state = {"step": jnp.zeros((), jnp.int32), "rng": jax.random.key(0),
                 "reid": {**variables, "opt_state": tx.init(variables["params"])}}
        new_state, step_metrics = jax.jit(reid_baseline.make_train_step(config, model, tx))(state, batch)
        results[jnp.dtype(compute_dtype).name] = state, new_state, float(step_metrics.compute()["loss"])
    state, new_state, loss = results["bfloat16"]
    assert floating_dtypes(new_state["reid"]["params"]) == floating_dtypes(new_state["reid"]["opt_state"]) == {F32}
    assert floating_dtypes(new_state["reid"]["batch_stats"]) == {F32}
    assert np.isfinite(loss) and loss > 0
    np.testing.assert_allclose(loss, results["float32"][2], rtol=0.02)
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), new_state["reid"]["params"],
                                   state["reid"]["params"])
    assert min(jax.tree_util.tree_leaves(moved)) > 0
