"""PixelFade on Market-1501 with the published settings: AGW ResNet-50-NL authorization model at 256x128 (120 epochs,
or a saved one), PixelFade with 100 iterations in batches of 20 (epsilon 0.03, beta 0.01, beta_temp 0.04, momentum
0.6, five 20% chunks, 5 warm-up steps), the batch-level constraint and the pre-update features of the original's
evaluation; the recovery attack's unet_128 (Adam 1e-3, 100 epochs) regressing normalised images, scored after the
original's per-batch min-max normalisation.

    python -m anon_jax.main --config=configs/pixelfade_market1501.py --workdir=W \
        --config.data.root=/data/Market-1501-v15.09.15 \
        [--config.authorization.pretrained_dir=W0/authorization_model]

The variant `:cuhk03` switches to CUHK03 (new protocol, detected boxes) with the original's beta_temp 0.02 and
`:msmt17` to MSMT17; --config.data.root names the dataset folder in every case.
"""

from configs import pixelfade

DATASETS = {"market1501": "market1501", "cuhk03": "cuhk03_detected", "msmt17": "msmt17"}


def get_config(arg=None):
    dataset = arg or "market1501"
    if dataset not in DATASETS:
        raise ValueError(f"configs/pixelfade_market1501.py: unknown variant {dataset!r}; use one of {tuple(DATASETS)}.")
    config = pixelfade.base_config()
    config.data.name = DATASETS[dataset]  # the reader of the dataset folder in config.data.root
    config.data.root = ""  # the dataset folder: pass --config.data.root=... (nothing is downloaded)
    config.pixelfade.feature = "pre_update"  # the original evaluates the feature before the final step
    if dataset == "cuhk03":
        config.pixelfade.beta_temp = 0.02  # run.sh: 0.02 on CUHK03
    return config
