"""privacy-reid (ACM MM 2022), reversible anonymization of pedestrian images, on the embedded synthetic
pedestrians in the Market-1501 layout: the "C" baseline and the full model with supervision upgradation.

Variants: default = both models on 2 CPU cores (128x64 images, a narrow ResNet-18 AGW and 6-level U-Nets, few
epochs); `:smoke` = every stage on tiny data in about a minute (tests); `:paper` = the published networks and
schedule (ResNet-50 AGW, unet_128, 120 epochs, 256x128). Real datasets: configs/privacy_reid_market1501.py.
The desensitisation is chosen with --config.desensitize.kind=mosaic|blur|noise.
"""

import ml_collections

from anon_jax.data import image_data
from anon_jax.privacy import desensitize
from anon_jax.training import optim


def adam(beta1: float = 0.9) -> ml_collections.ConfigDict:
    """privacy-reid's optimizers: Adam 3.5e-4, L2 5e-4 added to the gradient, WarmupMultiStepLR stepped per epoch
    (factor 0.01 rising over 10 epochs, x0.1 at epochs 40 and 80)."""
    return optim.optimizer_config(name="adam", learning_rate=3.5e-4, beta1=beta1, weight_decay=5e-4,
                                  schedule="warmup_multistep_epochs", warmup_steps=0, warmup_epochs=10,
                                  warmup_factor=0.01, boundaries_epochs=(40, 80), decay_factors=(0.1, 0.1))


def base_config() -> ml_collections.ConfigDict:
    """The published settings; the data defaults to the embedded dataset at the published 256x128."""
    config = ml_collections.ConfigDict()
    config.method = "privacy_reid"  # anon_jax.methods registry key
    config.seed = 0  # parameters, augmentation, sampling, noise
    config.mesh_shape = (-1,)  # devices per mesh axis ("data", ["model"]); -1 = all devices
    config.compute_dtype = "auto"  # "float32", "bfloat16", or "auto" = bfloat16 on GPU/TPU, float32 on CPU

    # Fields documented in anon_jax/data/image_data.py (image_data_config).
    config.data = image_data.image_data_config()
    config.data.height = 256  # the originals resize every crop to 256x128 before desensitising it
    config.data.width = 128  # (the embedded images are rendered at 128x64 and upsampled)
    # Fields documented in anon_jax/privacy/desensitize.py (desensitize_config): mosaic 24, blur 12, noise 0.5.
    config.desensitize = desensitize.desensitize_config("mosaic")

    config.model = model = ml_collections.ConfigDict()  # the AGW ReId network C
    model.depth = 50  # ResNet depth (AGW: 50)
    model.width = 64  # channels of the first ResNet stage
    model.last_stride = 1  # stride of the last stage (AGW: 1)
    model.stem_relu = False  # AGW's stem has no ReLU after the first BN (a quirk kept by default)
    model.nonlocal_blocks = (0, 2, 3, 0)  # non-local blocks after the last n blocks of each stage
    model.nonlocal_one_channel = True  # the original's 1-channel non-local embedding (False: the intended C/2)
    # The paper's trunk init: a local torchvision ResNet-50 checkpoint (resnet50-19c8e357.pth); nothing is
    # downloaded, and reading the file needs PyTorch.
    model.imagenet_weights = ""  # "" trains from scratch

    config.generator = gen = ml_collections.ConfigDict()  # the anonymizer G and the recovery network G_R
    gen.num_downs = 7  # U-Net levels ('unet_128': 7; the image sides must be multiples of 2**num_downs)
    gen.ngf = 64  # channels of the outermost level
    gen.use_dropout = False  # the original's --no_dropout flag is a truthy string: no dropout

    config.discriminator = disc = ml_collections.ConfigDict()  # D1 (anonymizer) and D2 (recovery), conditional
    disc.ndf = 64  # channels of the first conv
    disc.n_layers = 3  # PatchGAN 'basic'

    config.loss = loss = ml_collections.ConfigDict()
    loss.label_smoothing = 0.1  # cross-entropy label smoothing
    loss.centre_weight = 5e-4  # weight of the centre loss in L_reid
    loss.centre_lr = 0.5  # the centres' SGD learning rate (on gradients divided by centre_weight)
    loss.gan_weight = 1.0  # weight of the two adversarial terms
    loss.protected_l1_weight = 100.0  # L1 of the protected image to the supervision target M
    loss.recovered_l1_weight = 100.0  # L1 of the recovered image to the raw one

    config.train = train = ml_collections.ConfigDict()  # sampling and augmentation, shared by both stages
    train.p = 16  # identities per batch
    train.k = 4  # images per identity (batch = p * k)
    train.pad = 10  # zero padding before the random crop
    train.erase_prob = 0.5  # random erasing probability

    config.baseline = base = ml_collections.ConfigDict()  # mode "C": AGW on raw + desensitised images
    base.num_epochs = 120  # epochs (the sampler's epoch length varies)
    base.reid_optimizer = adam()  # AGW's Adam
    base.log_every_steps = 50  # console and TensorBoard logging interval
    base.checkpoint_every_steps = 1000  # periodic checkpoint interval

    config.full = full = ml_collections.ConfigDict()  # mode "GCR": G, G_R, C, D1, D2
    full.num_epochs = 120  # epochs
    full.reid_init = "fresh"  # C's start: "fresh" (as the baseline's, the paper) or "baseline" (the trained C)
    full.reid_optimizer = adam()  # C
    full.generator_optimizer = adam(0.5)  # G (pix2pix betas (0.5, 0.999))
    full.recovery_optimizer = adam(0.5)  # G_R
    full.disc_anonymizer_optimizer = adam(0.5)  # D1
    full.disc_recovery_optimizer = adam(0.5)  # D2
    full.log_every_steps = 50  # logging interval
    full.checkpoint_every_steps = 1000  # periodic checkpoint interval

    config.upgrade = up = ml_collections.ConfigDict()  # supervision upgradation (needs data.validation_split)
    up.enabled = True  # False: the "w/o U" model (the target is always the desensitised image)
    up.val_every_epochs = 5  # validation period in epochs
    up.psnr_tolerance = 1.0  # protected images may be this much closer to raw (dB) than desensitised ones
    up.ssim_tolerance = 0.05  # the same for SSIM
    up.min_rank1 = 0.75  # validation rank-1 (raw query vs protected gallery) a snapshot must beat (VAL_R1)
    up.min_rank1_from_baseline = False  # True: use the C baseline's validation rank-1 instead of min_rank1

    config.eval = ev = ml_collections.ConfigDict()
    ev.batch_size = 128  # evaluation batch size
    ev.max_rank = 10  # CMC ranks reported
    return config


def get_config(arg=None):
    variant = arg or "default"
    if variant not in ("default", "smoke", "paper"):
        raise ValueError(f"Unknown variant {variant!r}; use '', ':smoke' or ':paper'.")
    config = base_config()
    if variant == "paper":
        return config
    # CPU default: the embedded images at their rendered 128x64, more identities than the event datasets' default
    # (a validation split of 8 people), narrow networks, fewer epochs. Blur: a U-Net reproduces it closely, where
    # mosaic's grid anchored at the image corner is hard for a translation-equivariant network in few steps.
    config.data.synthetic.num_identities = 64  # 40 train (8 of them validation), 24 test
    config.data.synthetic.num_train_identities = 40
    config.data.height = 128
    config.data.width = 64
    config.desensitize.kind = "blur"  # --config.desensitize.kind=mosaic|noise for the other two
    config.desensitize.mosaic_size = 12  # the published 24 px at 256x128 is 12 px at 128x64
    config.desensitize.blur_radius = 6.0  # the published 12 at 256x128
    config.model.depth = 18  # a ResNet-18 AGW
    config.model.width = 32  # first-stage channels
    config.model.nonlocal_blocks = (0, 1, 1, 0)  # ResNet-18 stages have two blocks
    config.model.nonlocal_one_channel = False  # the intended C/2 embedding
    config.generator.num_downs = 6  # 128x64 images: a 2x1 bottleneck, as unet_128 at 256x128
    config.generator.ngf = 16  # a quarter of the published width
    config.discriminator.ndf = 16  # a quarter of the published width
    config.train.p = 8  # batches of 32
    config.baseline.num_epochs = 20  # a sixth of the published 120 (32 steps per epoch)
    config.full.num_epochs = 40  # a third of the published 120
    # Without ImageNet weights a C trained from scratch inside the GAN lags the baseline's; starting from the
    # trained baseline plays the part of the paper's pretrained trunk.
    config.full.reid_init = "baseline"  # C starts from the trained C baseline
    for section in (config.baseline, config.full):
        for name in [key for key in section if key.endswith("_optimizer")]:
            section[name].learning_rate = 1e-3  # from scratch and few epochs: a larger rate
            section[name].warmup_epochs = 3  # warm-up and decay scaled to the shorter schedule
            # x0.1 at 40% of the epochs: G matches the desensitisation closely only at the lower rate
            section[name].boundaries_epochs = (2 * section.num_epochs // 5,)
            section[name].decay_factors = (0.1,)
        section.log_every_steps = 20
        section.checkpoint_every_steps = 100
    config.upgrade.val_every_epochs = 3  # validation period in epochs
    config.upgrade.min_rank1_from_baseline = True  # the snapshot must beat the classical baseline on validation
    config.eval.batch_size = 64  # evaluation batch size
    if variant == "smoke":
        synthetic = config.data.synthetic
        synthetic.num_identities = 12  # 10 train identities (2 of them validation), 2 test
        synthetic.num_train_identities = 10
        synthetic.num_cameras = 2
        synthetic.images_per_camera = 4
        synthetic.num_distractors = 2
        synthetic.num_junk = 1
        synthetic.height = 64  # rendered at the smoke image size
        synthetic.width = 32
        config.data.height = 64
        config.data.width = 32
        config.desensitize.mosaic_size = 6
        config.model.width = 8
        config.generator.num_downs = 5
        config.generator.ngf = 4
        config.discriminator.ndf = 4
        config.discriminator.n_layers = 2  # 64x32 images: a smaller PatchGAN
        config.train.p = 4
        config.train.k = 2  # batches of 8
        config.baseline.num_epochs = 2
        config.full.num_epochs = 3
        config.upgrade.val_every_epochs = 1  # validations after epochs 1 and 2
        for section in (config.baseline, config.full):
            section.log_every_steps = 2
            section.checkpoint_every_steps = 4
        config.eval.batch_size = 16
    return config
