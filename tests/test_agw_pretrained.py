"""AGW save_pretrained / load_pretrained: a round trip restores every array and the eval-mode output exactly, the
JSON holds the settings, and each broken directory gets an AGWCheckpointError naming the file."""

import functools
import json
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from anon_jax.models import agw

NUM_CLASSES = 5
IMAGE_SIZE = (32, 16)
MEAN = (0.485, 0.456, 0.406)
STD = (0.5, 0.5, 0.5)


def tiny_model_config(**overrides) -> ml_collections.ConfigDict:
    fields = dict(depth=18, width=8, last_stride=1, stem_relu=False, nonlocal_blocks=(0, 1, 1, 0),
                  nonlocal_one_channel=False)
    return ml_collections.ConfigDict({**fields, **overrides})


def random_variables(model_config, num_classes: int, seed: int = 0) -> dict:
    """NumPy variables for the network of `model_config`, every leaf random (running variances positive, kernels
    He-scaled so outputs stay finite): no compiled init, and a round trip that dropped or re-initialised anything
    would show."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(agw.abstract_variables(model_config, num_classes), sep="/")
    for path, leaf in flat.items():
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if path.endswith("/var"):
            flat[path] = 1.0 + 0.2 * np.abs(noise)
        elif path.endswith("/kernel"):
            flat[path] = noise * np.sqrt(2.0 / np.prod(leaf.shape[:-1])).astype(np.float32)
        elif path.endswith("/p"):
            flat[path] = 3.0 + 0.1 * noise
        elif path.endswith("/scale"):
            flat[path] = 1.0 + 0.1 * noise
        else:
            flat[path] = 0.05 * noise
    return traverse_util.unflatten_dict(flat, sep="/")


@pytest.fixture(scope="module")
def trained():
    return agw.build_agw_network(tiny_model_config(), NUM_CLASSES), random_variables(tiny_model_config(), NUM_CLASSES)


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    directory = tmp_path_factory.mktemp("agw") / "reid"
    agw.save_pretrained(directory, tiny_model_config(), NUM_CLASSES, trained[1], image_size=IMAGE_SIZE,
                        pixel_mean=MEAN, pixel_std=STD)
    return directory


def broken_copy(saved, tmp_path, edit):
    """A copy of the saved directory whose JSON document is replaced by edit(document) (a str is written as is)."""
    directory = tmp_path / "copy"
    shutil.copytree(saved, directory)
    path = directory / agw.CONFIG_FILE
    document = edit(json.loads(path.read_text()))
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return directory, path


def test_round_trip_restores_arrays_and_eval_output(trained, saved):
    network, variables = trained
    loaded_network, loaded, settings = agw.load_pretrained(saved)
    expected = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
    got = traverse_util.flatten_dict(jax.device_get(loaded), sep="/")
    assert sorted(got) == sorted(expected)
    assert any(path.startswith("batch_stats/") for path in got)
    for path, value in expected.items():
        assert got[path].dtype == np.float32, path
        np.testing.assert_array_equal(got[path], value, err_msg=path)
    assert loaded_network == network
    images = jax.random.normal(jax.random.PRNGKey(2), (3, *IMAGE_SIZE, 3))
    apply = jax.jit(functools.partial(network.apply, train=False))
    embed = np.asarray(apply(variables, images))
    assert embed.shape == (3, 8 * 8) and np.all(np.isfinite(embed))
    np.testing.assert_array_equal(np.asarray(apply(loaded, images)), embed)
    assert settings == {"image_size": IMAGE_SIZE, "pixel_mean": MEAN, "pixel_std": STD, "num_classes": NUM_CLASSES,
                        "model": tiny_model_config().to_dict()}


def test_json_document(saved):
    document = json.loads((saved / agw.CONFIG_FILE).read_text())
    assert document == {
        "format": "anon_jax.models.agw/1", "num_classes": 5, "image_size": [32, 16], "pixel_mean": list(MEAN),
        "pixel_std": [0.5, 0.5, 0.5],
        "model": {"depth": 18, "width": 8, "last_stride": 1, "stem_relu": False, "nonlocal_blocks": [0, 1, 1, 0],
                  "nonlocal_one_channel": False}}
    assert sorted(p.name for p in saved.iterdir()) == [agw.CONFIG_FILE, agw.VARIABLES_DIR]


def test_save_replaces_an_existing_directory(trained, saved, tmp_path):
    directory = tmp_path / "reid"
    shutil.copytree(saved, directory)
    (directory / "stale.txt").write_text("old")
    agw.save_pretrained(directory, tiny_model_config(), NUM_CLASSES, trained[1], image_size=(64, 32),
                        pixel_mean=MEAN, pixel_std=(0.229, 0.224, 0.225))
    assert not (directory / "stale.txt").exists()
    settings = agw.load_settings(directory)
    assert settings["image_size"] == (64, 32) and settings["pixel_std"] == (0.229, 0.224, 0.225)


def test_missing_json(tmp_path):
    with pytest.raises(agw.AGWCheckpointError, match=rf"{tmp_path / agw.CONFIG_FILE} is missing.*save_pretrained"):
        agw.load_pretrained(tmp_path)


def test_wrong_format_tag(saved, tmp_path):
    directory, path = broken_copy(saved, tmp_path, lambda d: {**d, "format": "anon_jax.models.anonymizer/1"})
    with pytest.raises(agw.AGWCheckpointError, match=rf"{path}: format 'anon_jax.models.anonymizer/1', expected "
                                                      r"'anon_jax.models.agw/1'.*save it again"):
        agw.load_pretrained(directory)


def test_malformed_json(saved, tmp_path):
    directory, path = broken_copy(saved, tmp_path, lambda d: '{"format": "anon_jax.models.agw/1", ')
    with pytest.raises(agw.AGWCheckpointError, match=rf"{path}: not valid JSON"):
        agw.load_pretrained(directory)


@pytest.mark.parametrize("edit, message", [
    (lambda d: {k: v for k, v in d.items() if k != "num_classes"}, r"field 'num_classes' is missing"),
    (lambda d: {**d, "image_size": [32]}, r"image_size=\[32\] must be \(height, width\)"),
    (lambda d: {**d, "pixel_std": [0.5, 0.0, 0.5]}, r"pixel_std=.*all > 0"),
    (lambda d: {**d, "model": {**d["model"], "depth": 19}}, r"depth=19 is not supported"),
    (lambda d: {**d, "model": {**d["model"], "dropout": 0.1}}, r"unknown model field\(s\) \['dropout'\]"),
])
def test_invalid_settings(saved, tmp_path, edit, message):
    directory, path = broken_copy(saved, tmp_path, edit)
    with pytest.raises(agw.AGWCheckpointError, match=rf"{path}: .*{message}"):
        agw.load_pretrained(directory)


def test_variables_not_matching_config(saved, tmp_path):
    directory, _ = broken_copy(saved, tmp_path, lambda d: {**d, "num_classes": 6})
    with pytest.raises(agw.AGWCheckpointError,
                       match=rf"{directory / agw.VARIABLES_DIR}: the saved variables do not match {agw.CONFIG_FILE}"
                             r".*head/logits_dense/kernel: \(64, 5\) vs \(64, 6\)"):
        agw.load_pretrained(directory)


def test_missing_variables(saved, tmp_path):
    directory, _ = broken_copy(saved, tmp_path, lambda d: d)
    shutil.rmtree(directory / agw.VARIABLES_DIR)
    with pytest.raises(agw.AGWCheckpointError, match=rf"{directory / agw.VARIABLES_DIR} is missing"):
        agw.load_pretrained(directory)


def test_save_rejects_bad_input(trained, tmp_path):
    variables = trained[1]
    kwargs = dict(image_size=IMAGE_SIZE, pixel_mean=MEAN, pixel_std=STD)
    with pytest.raises(agw.AGWCheckpointError, match=r"head/logits_dense/kernel: \(64, 5\) vs \(64, 7\)"):
        agw.save_pretrained(tmp_path / "a", tiny_model_config(), 7, variables, **kwargs)
    with pytest.raises(agw.AGWCheckpointError, match=r"batch_stats/\S+: missing vs"):
        agw.save_pretrained(tmp_path / "b", tiny_model_config(), NUM_CLASSES, {"params": variables["params"]},
                            **kwargs)
    with pytest.raises(agw.AGWCheckpointError, match=r"image_size=\(32, 0\)"):
        agw.save_pretrained(tmp_path / "c", tiny_model_config(), NUM_CLASSES, variables,
                            **{**kwargs, "image_size": (32, 0)})
    with pytest.raises(agw.AGWCheckpointError, match=r"pixel_mean=\(0.5, 0.5\) must be 3 finite numbers"):
        agw.save_pretrained(tmp_path / "d", tiny_model_config(), NUM_CLASSES, variables,
                            **{**kwargs, "pixel_mean": (0.5, 0.5)})
    with pytest.raises(agw.AGWCheckpointError, match=r"model_config needs the fields"):
        agw.save_pretrained(tmp_path / "e", ml_collections.ConfigDict({"depth": 18}), NUM_CLASSES, variables,
                            **kwargs)
    assert not any(tmp_path.iterdir())  # nothing half-written
