"""privacy-reid on Market-1501 with the published settings (ResNet-50 AGW, unet_128 G and G_R, PatchGAN D1/D2,
256x128, 120 epochs, supervision upgradation on the 80/20 validation split with VAL_R1 0.75, PSNR/SSIM tolerances
1.0 dB / 0.05). The variant picks the desensitisation with its published parameter: `:mosaic` (24 px, default),
`:blur` (Pillow radius 12) or `:noise` (sigma 0.5).

    python -m anon_jax.main --config=configs/privacy_reid_market1501.py:blur --workdir=W \
        --config.data.root=/data/Market-1501-v15.09.15 \
        [--config.model.imagenet_weights=/weights/resnet50-19c8e357.pth]

The same settings run on MSMT17 (Market-style folders) with --config.data.name=msmt17, and on CUHK03 with
--config.data.name=cuhk03_detected --config.upgrade.enabled=False --config.data.validation_split=False (its
validation protocol files are not published: the "w/o U" model).
"""

from configs import privacy_reid

KINDS = ("mosaic", "blur", "noise")


def get_config(arg=None):
    kind = arg or "mosaic"
    if kind not in KINDS:
        raise ValueError(f"configs/privacy_reid_market1501.py: unknown variant {kind!r}; use one of {KINDS}.")
    config = privacy_reid.base_config()
    config.data.name = "market1501"  # <root>/{bounding_box_train, query, bounding_box_test}
    config.desensitize.kind = kind  # the published parameters are the desensitize_config defaults
    config.data.validation_split = True  # market1501_val: the split tool's 80/20 layout, for upgradation
    config.upgrade.min_rank1 = 0.75  # VAL_R1 of the README commands (the "w/o U" model's rank-1)
    return config
