"""Config files: every variant builds, every field is commented, the paper variant has the published settings."""

import pathlib
import re

import pytest

import configs.anonynoise as anonynoise
import configs.anonynoise_dvsgesture as anonynoise_dvsgesture
import configs.anonynoise_eventreidv2 as anonynoise_eventreidv2
import configs.anonynoise_see as anonynoise_see
import configs.eventreid as eventreid
import configs.eventreid_baseline as eventreid_baseline
import configs.pixelfade as pixelfade
import configs.pixelfade_market1501 as pixelfade_market1501
import configs.privacy_reid as privacy_reid
import configs.privacy_reid_market1501 as privacy_reid_market1501

REPO = pathlib.Path(__file__).resolve().parents[1]
# Config files plus the modules that build sub-configs for them.
CONFIG_SOURCES = sorted((REPO / "configs").glob("*.py")) + [
    REPO / "anon_jax" / path
    for path in ("data/datasets.py", "data/synthetic.py", "data/reconstruction_sequences.py", "training/optim.py",
                 "models/anonymizer.py", "data/image_data.py", "data/synthetic_images.py", "privacy/desensitize.py",
                 "privacy/pixelfade.py")
]


@pytest.mark.parametrize("variant", [None, "smoke", "paper"])
def test_variants_build(variant):
    config = eventreid_baseline.get_config(variant)
    assert config.method == "reid_baseline"
    assert config.train.batch_size > 0 and config.train.num_epochs > 0


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="variant"):
        eventreid_baseline.get_config("huge")


def test_paper_variant_matches_the_published_settings():
    config = eventreid_baseline.get_config("paper")
    assert (config.data.name, config.data.num_bins, config.data.height, config.data.width) == ("event_reid", 5, 384, 192)
    assert (config.model.depth, config.model.width, config.model.last_stride) == (50, 64, 1)
    assert (config.train.batch_size, config.train.num_epochs) == (8, 60)
    opt = config.optimizer
    assert (opt.name, opt.learning_rate, opt.momentum, opt.nesterov, opt.weight_decay) == ("sgd", 0.05, 0.9, True, 5e-4)
    assert (opt.schedule, tuple(opt.boundaries_epochs), tuple(opt.decay_factors)) == ("piecewise_epochs", (40, 50), (0.2, 0.1))
    assert opt.backbone_lr_multiplier == 0.1 and config.loss.label_smoothing == 0.0


@pytest.mark.parametrize("path", CONFIG_SOURCES, ids=lambda p: p.name)
def test_every_config_field_has_a_comment(path):
    """The first assignment of each field carries a comment; later overrides in variant branches need none.

    Fields are assignments to `config` or to a section alias (`x = ml_collections.ConfigDict()` or
    `config.a = x = ...`). Sections built by a `*_config(...)` function (e.g. `config.optimizer = opt =
    optim.optimizer_config(...)`) are documented in that function's module, which is checked here too.
    """
    lines = path.read_text().splitlines()
    aliases = {"config"}
    for line in lines:
        match = re.match(r"\s*[\w.]+ = (\w+) = ", line) or re.match(r"\s*(\w+) = ml_collections\.ConfigDict\(\)", line)
        if match:
            aliases.add(match.group(1))
    external, first_definitions = set(), {}
    for line in lines:
        match = re.match(r"\s*(\w+(?:\.\w+)+) = (?:(\w+) = )?(.*)", line)
        if not match or match.group(1).split(".")[0] not in aliases:
            continue
        name, alias, value = match.groups()
        if re.match(r"[\w.]*_config\(", value):
            external.update({name, alias} - {None})
            continue
        if "ConfigDict()" in value or any(name.startswith(prefix + ".") for prefix in external):
            continue
        first_definitions.setdefault(name, line)
    missing = [line.strip() for line in first_definitions.values() if "  # " not in line]
    assert len(first_definitions) >= 4 and not missing, missing


@pytest.mark.parametrize("variant", [None, "smoke", "paper"])
def test_event_anonymization_variants_build(variant):
    config = eventreid.get_config(variant)
    assert config.method == "event_anonymization"
    assert config.reconstructor.pretrain.method == "reconstructor_pretrain"
    assert config.reconstructor.pretrain.model.num_bins == config.data.num_bins


def test_event_anonymization_paper_variant_matches_the_published_settings():
    config = eventreid.get_config("paper")
    assert (config.data.name, config.data.num_bins, config.data.height, config.data.width) == ("event_reid", 5, 384, 192)
    assert (config.baseline.model.depth, config.baseline.model.width) == (50, 64)
    assert (config.anonymizer.kind, config.joint.attacker, config.joint.loss.reference) == (
        "published", "stateless", "reconstruction")
    assert (config.joint.loss.struct_weight, config.joint.loss.rec_weight, config.joint.loss.label_smoothing) == (1, 1, 0)
    assert (config.joint.train.batch_size, config.joint.train.num_epochs, config.joint.train.random_flip) == (8, 60, False)
    opt = config.joint.optimizer
    assert (opt.name, opt.learning_rate, opt.momentum, opt.nesterov, opt.weight_decay) == ("sgd", 0.05, 0.9, True, 5e-4)
    assert (opt.schedule, tuple(opt.boundaries_epochs), tuple(opt.decay_factors)) == ("piecewise_epochs", (40, 50), (0.2, 0.1))
    assert opt.backbone_lr_multiplier == 0.1 and config.joint.anonymizer_lr_multiplier == 0.1
    assert not config.joint.init_from_baseline


@pytest.mark.parametrize("variant", [None, "smoke", "paper"])
def test_anonynoise_variants_build(variant):
    config = anonynoise.get_config(variant)
    assert config.method == "anonynoise" and config.data.name == "synthetic"
    assert config.anonymizer.pretrained_dir == "" and config.post.init == "pipeline"


def test_anonynoise_real_dataset_configs_hold_the_published_settings():
    dvsg, see, eventreid = anonynoise_dvsgesture.get_config(), anonynoise_see.get_config(), \
        anonynoise_eventreidv2.get_config()
    for config in (dvsg, see, eventreid):
        assert (config.model.depth, config.model.width, config.model.embed_dim) == (50, 64, 512)
        assert tuple(config.anonymizer.features) == (64, 128, 256, 128, 64)
        assert (config.pretrain.num_epochs, config.pipeline.num_epochs, config.post.num_epochs) == (200, 300, 200)
        assert config.pipeline.anonymizer_optimizer.learning_rate == 5e-4 and config.loss.triplet_margin == 4.0
    augments = {name: config.data.augment for name, config in
                (("dvsgesture", dvsg), ("see", see), ("eventreidv2", eventreid))}
    assert {name: (a.padding, a.crop_size, a.hflip, a.max_degrees) for name, a in augments.items()} == {
        "dvsgesture": (10, 0, False, 15.0), "see": (15, 180, True, 15.0), "eventreidv2": (25, 0, True, 15.0)}
    assert (dvsg.data.name, see.data.name, eventreid.data.name) == ("dvsgesture", "see", "eventreidv2")
    assert eventreid.data.size == 304 and eventreid.post.init == "pretrained"
    for module in (anonynoise, anonynoise_dvsgesture, anonynoise_see, anonynoise_eventreidv2):
        with pytest.raises(ValueError, match="variant"):
            module.get_config("huge")


@pytest.mark.parametrize("variant", [None, "smoke", "paper"])
def test_privacy_reid_variants_build(variant):
    config = privacy_reid.get_config(variant)
    assert config.method == "privacy_reid" and config.full.num_epochs > 0
    # The U-Nets need image sides divisible by 2**num_downs.
    assert config.data.height % 2**config.generator.num_downs == 0
    assert config.data.width % 2**config.generator.num_downs == 0


@pytest.mark.parametrize("kind, parameter, value", [("mosaic", "mosaic_size", 24), ("blur", "blur_radius", 12.0),
                                                    ("noise", "noise_sigma", 0.5)])
def test_privacy_reid_market1501_has_the_published_settings(kind, parameter, value):
    config = privacy_reid_market1501.get_config(None if kind == "mosaic" else kind)
    assert (config.data.name, config.data.height, config.data.width) == ("market1501", 256, 128)
    assert config.desensitize.kind == kind and config.desensitize[parameter] == value
    assert (config.model.depth, config.model.last_stride, tuple(config.model.nonlocal_blocks)) == (50, 1, (0, 2, 3, 0))
    assert config.model.nonlocal_one_channel and not config.model.stem_relu
    assert (config.generator.num_downs, config.generator.ngf, config.discriminator.ndf) == (7, 64, 64)
    assert (config.train.p, config.train.k, config.train.pad, config.train.erase_prob) == (16, 4, 10, 0.5)
    loss = config.loss
    assert (loss.label_smoothing, loss.centre_weight, loss.centre_lr) == (0.1, 5e-4, 0.5)
    assert (loss.protected_l1_weight, loss.recovered_l1_weight, loss.gan_weight) == (100.0, 100.0, 1.0)
    for section, names in ((config.baseline, ("reid",)), (config.full, ("reid", "generator", "recovery",
                                                                        "disc_anonymizer", "disc_recovery"))):
        assert section.num_epochs == 120
        for name in names:
            opt = section[f"{name}_optimizer"]
            assert (opt.name, opt.learning_rate, opt.weight_decay, opt.schedule) == (
                "adam", 3.5e-4, 5e-4, "warmup_multistep_epochs")
            assert (opt.warmup_epochs, opt.warmup_factor, tuple(opt.boundaries_epochs)) == (10, 0.01, (40, 80))
            assert opt.beta1 == (0.9 if name == "reid" else 0.5)
    up = config.upgrade
    assert (up.enabled, up.val_every_epochs, up.psnr_tolerance, up.ssim_tolerance, up.min_rank1) == (
        True, 5, 1.0, 0.05, 0.75)
    with pytest.raises(ValueError, match="variant"):
        privacy_reid_market1501.get_config("pixelate")


@pytest.mark.parametrize("variant", [None, "smoke", "paper"])
def test_pixelfade_variants_build(variant):
    config = pixelfade.get_config(variant)
    assert config.method == "pixelfade" and not config.data.validation_split
    for levels in (config.attack.num_downs, config.generator.num_downs):
        assert config.data.height % 2**levels == 0 and config.data.width % 2**levels == 0


@pytest.mark.parametrize("dataset, name, beta_temp", [(None, "market1501", 0.04), ("cuhk03", "cuhk03_detected", 0.02),
                                                      ("msmt17", "msmt17", 0.04)])
def test_pixelfade_real_dataset_configs_hold_the_published_settings(dataset, name, beta_temp):
    config = pixelfade_market1501.get_config(dataset)
    assert (config.data.name, config.data.height, config.data.width) == (name, 256, 128)
    assert tuple(config.data.pixel_std) == (0.229, 0.224, 0.225)
    fade = config.pixelfade
    assert (fade.max_iter, fade.fade_num_iter, fade.warmup_iter, fade.batch_size) == (100, 5, 5, 20)
    assert (fade.beta, fade.beta_temp, fade.momentum, fade.epsilon) == (0.01, beta_temp, 0.6, 0.03)
    assert (fade.constraint, fade.feature) == ("batch", "pre_update")
    assert (config.model.depth, config.model.last_stride, config.model.nonlocal_one_channel) == (50, 1, True)
    assert tuple(config.baseline.reid_optimizer.boundaries_epochs) == (40, 70)
    attack = config.attack
    assert (attack.num_downs, attack.ngf, attack.batch_size, attack.num_epochs) == (7, 64, 20, 100)
    assert (attack.optimizer.name, attack.optimizer.learning_rate, attack.optimizer.schedule) == ("adam", 1e-3,
                                                                                                 "constant")
    assert (attack.target, attack.metric_normalization) == ("normalized", "batch_minmax")
    with pytest.raises(ValueError, match="variant"):
        pixelfade_market1501.get_config("dukemtmc")
