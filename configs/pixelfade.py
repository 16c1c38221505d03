"""PixelFade (ACM MM 2024) on the embedded synthetic pedestrians: an AGW authorization model, PixelFade protection of
the test images and of the attack's training images, the recovery attack on PixelFade, mosaic, blur, noise and
privacy-reid's reversible anonymizer, and their comparison on the same data with the same ReId model.

Variants: default = 2 CPU cores (128x64 images, a narrow ResNet-18 AGW, short attack training); `:smoke` = every
stage on tiny data in about a minute (tests); `:paper` = the published settings (ResNet-50 AGW, 256x128, 100 PixelFade
iterations in batches of 20, the attack's unet_128 for 100 epochs, its min-max metric normalisation). Real data:
configs/pixelfade_market1501.py. A trained authorization model is reused with
--config.authorization.pretrained_dir=DIR (a W/authorization_model folder of an earlier run).
"""

import ml_collections

from anon_jax.methods import pixelfade as pixelfade_method
from anon_jax.privacy import pixelfade
from anon_jax.training import optim
from configs import privacy_reid

IMAGENET_STD = (0.229, 0.224, 0.225)


def base_config() -> ml_collections.ConfigDict:
    """The published settings on the embedded data at 256x128."""
    config = privacy_reid.base_config()
    config.method = "pixelfade"  # anon_jax.methods registry key
    config.data.validation_split = False  # PixelFade has no validation stage
    config.data.pixel_std = IMAGENET_STD  # PixelFade's AGW normalises with ImageNet's mean and std
    # The authorization model is plain AGW on raw images (config.baseline's schedule; PixelFade's YAML: x0.1 at
    # epochs 40 and 70 of 120).
    for name in ("reid_optimizer",):
        config.baseline[name].boundaries_epochs = (40, 70)
    config.authorization = ml_collections.ConfigDict()
    config.authorization.pretrained_dir = ""  # a saved AGW (W/authorization_model of a run) instead of training

    # Fields documented in anon_jax/privacy/pixelfade.py (pixelfade_config).
    config.pixelfade = pixelfade.pixelfade_config()

    config.compare = ml_collections.ConfigDict()
    # Methods protected and attacked; mosaic/blur/noise take config.desensitize's sizes, "reversible" trains
    # privacy-reid's GCR (config.full, without upgradation) with C starting from the authorization model.
    config.compare.methods = pixelfade_method.METHODS  # pixelfade, mosaic, blur, noise, reversible
    config.upgrade.enabled = False  # the reversible anonymizer of the comparison: no supervision upgradation

    config.attack = attack = ml_collections.ConfigDict()  # the recovery U-Net (recovery_attack.py)
    attack.num_downs = 7  # U-Net levels ('unet_128')
    attack.ngf = 64  # channels of the outermost level
    attack.batch_size = 20  # pairs per step (the saved batches of 20)
    attack.num_epochs = 100  # epochs over the attack's training pairs
    attack.max_train_images = 0  # training images protected for the attack (0: all of them)
    attack.optimizer = optim.optimizer_config(name="adam", learning_rate=1e-3, weight_decay=0.0, schedule="constant",
                                              warmup_steps=0)  # Adam 1e-3, default betas, no schedule
    # "normalized": the original regresses the normalised image, partly out of reach of the tanh output;
    # "unit": [-1, 1] pixels, which the tanh can reach.
    attack.target = "normalized"  # regression target space: "normalized" | "unit"
    # "batch_minmax": the original maps each batch tensor to [0, 1] by its own min and max before PSNR/SSIM/MSE;
    # "clip": [0, 1] pixels, outputs clipped.
    attack.metric_normalization = "batch_minmax"  # "batch_minmax" | "clip"
    attack.eval_batch_size = 20  # batches of the quality evaluation (matters for "batch_minmax")
    attack.log_every_steps = 100  # logging interval
    attack.checkpoint_every_steps = 1000  # periodic checkpoint interval
    config.eval.grid_images = 6  # test images shown in the grid
    return config


def get_config(arg=None):
    variant = arg or "default"
    if variant not in ("default", "smoke", "paper"):
        raise ValueError(f"Unknown variant {variant!r}; use '', ':smoke' or ':paper'.")
    config = base_config()
    if variant == "paper":
        return config
    attack = config.attack
    # CPU default: the privacy-reid CPU sizes (128x64 images, ResNet-18 AGW, 6-level U-Nets of width 16).
    cpu = privacy_reid.get_config()
    for section in ("model", "generator", "discriminator", "train"):
        config[section] = cpu[section]
    synthetic = config.data.synthetic
    synthetic.num_identities = 48  # 32 train identities, 16 test
    synthetic.num_train_identities = 32
    config.data.height = 128  # the embedded images at their rendered size
    config.data.width = 64  # (paper: 256x128)
    config.desensitize = cpu.desensitize  # blur radius 6, mosaic 12 px: the published sizes at half resolution
    config.baseline.num_epochs = 20  # the authorization AGW
    config.full.num_epochs = 6  # the reversible anonymizer (a short run: its G stays close to the blur target)
    config.full.reid_init = "baseline"  # C starts from the authorization model
    for section in (config.baseline, config.full):
        for name in [key for key in section if key.endswith("_optimizer")]:
            section[name].learning_rate = 1e-3  # from scratch and few epochs: a larger rate
            section[name].warmup_epochs = 3 if section is config.baseline else 0
            section[name].boundaries_epochs = (2 * section.num_epochs // 5,)  # x0.1 at 40% of the epochs
            section[name].decay_factors = (0.1,)
        section.log_every_steps = 20
        section.checkpoint_every_steps = 100
    config.pixelfade.batch_size = 32  # more images per compiled call on 2 cores
    attack.num_downs = 6  # 128x64 images: a 2x1 bottleneck
    attack.ngf = 16  # a quarter of the published width
    attack.batch_size = 32
    attack.num_epochs = 10
    attack.max_train_images = 512  # every second training image
    attack.target = "unit"
    attack.metric_normalization = "clip"
    attack.log_every_steps = 20
    attack.checkpoint_every_steps = 100
    config.eval.batch_size = 64  # evaluation batch size
    if variant == "smoke":
        smoke = privacy_reid.get_config("smoke")
        for section in ("model", "generator", "discriminator", "train"):
            config[section] = smoke[section]
        config.data.synthetic = smoke.data.synthetic  # privacy-reid's tiny embedded dataset (12 people, 64x32)
        config.data.height = smoke.data.height
        config.data.width = smoke.data.width
        config.desensitize.mosaic_size = smoke.desensitize.mosaic_size  # 6 px at 64x32
        config.baseline.num_epochs = 2
        config.full.num_epochs = 1
        for section in (config.baseline, config.full):
            section.log_every_steps = 2
            section.checkpoint_every_steps = 4
        config.pixelfade.max_iter = 8
        config.pixelfade.batch_size = 8
        attack.num_downs = 5
        attack.ngf = 4
        attack.batch_size = 8
        attack.num_epochs = 2
        attack.max_train_images = 16
        attack.log_every_steps = 2
        attack.checkpoint_every_steps = 4
        config.eval.batch_size = 16
        config.eval.grid_images = 3
    return config
