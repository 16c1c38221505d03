"""ReId on raw (not anonymised) event voxel grids: the "no anonymization" upper bound of ICCV 2023.

Variants: default = the embedded synthetic dataset at a CPU-friendly size; `:smoke` = every stage on
tiny data in about a minute (tests); `:paper` = the published settings (ResNet-50, 5 bins, 384x192,
batch 8, SGD Nesterov schedule over 60 epochs) for the real Event-ReId data on an accelerator.
"""

import ml_collections

from anon_jax.data import datasets
from anon_jax.training import optim


def get_config(arg=None):
    variant = arg or "default"
    if variant not in ("default", "smoke", "paper"):
        raise ValueError(f"Unknown variant {variant!r}; use '', ':smoke' or ':paper'.")
    config = ml_collections.ConfigDict()
    config.method = "reid_baseline"  # anon_jax.methods registry key
    config.seed = 0  # seeds parameters, sampling, augmentation and the query draw
    config.mesh_shape = (-1,)  # devices per mesh axis ("data", ["model"]); -1 = all devices
    config.compute_dtype = "auto"  # "float32", "bfloat16", or "auto" = bfloat16 on GPU/TPU, float32 on CPU

    # Fields documented in anon_jax/data/datasets.py (data_config).
    config.data = data = datasets.data_config()

    config.model = model = ml_collections.ConfigDict()
    model.depth = 18  # ResNet depth: 18, 34 or 50
    model.width = 32  # channels of the first ResNet stage (64 in torchvision)
    model.last_stride = 1  # stride of the last ResNet stage (1 as in the paper)
    model.head = "classblock"  # "classblock" (paper: Linear-BN-LeakyReLU-Linear) or "bnneck"
    model.embed_dim = 256  # ClassBlock bottleneck size (the "embed" feature)

    config.loss = loss = ml_collections.ConfigDict()
    loss.label_smoothing = 0.1  # cross-entropy label smoothing (0 in the paper)
    loss.triplet_weight = 0.0  # weight of the batch-hard triplet loss on the embed feature
    loss.triplet_margin = 0.3  # triplet margin; None for the soft margin

    config.train = train = ml_collections.ConfigDict()
    train.batch_size = 32  # global batch size (split over the devices)
    train.num_epochs = 12  # passes over the training chunks
    train.sampler = "shuffle"  # "shuffle" (random order) or "pk" (P identities x K instances)
    train.pk_instances = 4  # K of the P x K sampler
    train.random_flip = True  # horizontal flip augmentation (the original uses none)
    train.log_every_steps = 50  # console and TensorBoard logging interval
    train.checkpoint_every_steps = 200  # periodic checkpoint interval
    train.max_checkpoints_to_keep = 2  # older checkpoints are deleted

    # The paper's SGD (Nesterov, momentum 0.9, weight decay 5e-4); fields documented in anon_jax/training/optim.py.
    config.optimizer = opt = optim.optimizer_config(
        boundaries_epochs=(40, 50),  # used by :paper's piecewise schedule: 0.05 -> 0.01 -> 0.001
        decay_factors=(0.2, 0.1),
    )

    config.eval = ev = ml_collections.ConfigDict()
    ev.batch_size = 64  # evaluation batch size
    ev.max_rank = 10  # CMC ranks reported
    ev.feature = "embed"  # descriptor reported as the headline: "embed" (256-d) or "pool5"

    if variant == "smoke":
        data.height, data.width = 32, 16
        data.synthetic.num_identities = 6
        data.synthetic.num_cameras = 2
        data.synthetic.duration_s = 0.4
        data.synthetic.height, data.synthetic.width = 64, 32
        model.width = 8
        model.embed_dim = 32
        train.batch_size = 8
        train.num_epochs = 2
        train.log_every_steps = 5
        train.checkpoint_every_steps = 10
        opt.warmup_steps = 5
        ev.batch_size = 16
    elif variant == "paper":
        data.name = "event_reid"
        data.height, data.width = 384, 192
        model.depth = 50
        model.width = 64
        loss.label_smoothing = 0.0
        train.batch_size = 8
        train.num_epochs = 60
        train.random_flip = False
        train.log_every_steps = 100
        train.checkpoint_every_steps = 1000
        opt.schedule = "piecewise_epochs"
        opt.warmup_steps = 0
        opt.backbone_lr_multiplier = 0.1
    return config
