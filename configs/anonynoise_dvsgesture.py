"""AnonyNoise on DVS-Gesture (tonic's on-disk layout), the published settings: target = gesture (11 classes),
identity = user (23 training users, 6 unseen), 5 time bins of 128x128 frames, ResNet-50 target and ReId networks.

    python -m anon_jax.main --config=configs/anonynoise_dvsgesture.py --workdir=W \
        --config.data.root=/data/DVSGesture --config.data.protocol_dir=/data/anonynoise_protocol \
        [--config.model.imagenet_weights=/weights/resnet50-0676ba61.pth]

Sized for an accelerator (300 pipeline epochs of three ResNet-50 steps); the finished run's W/anonymizer folder is
what configs/anonynoise_eventreidv2.py attacks.
"""

from configs import anonynoise


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/anonynoise_dvsgesture.py has no variant {arg!r}; it holds the published settings.")
    config = anonynoise.base_config()
    config.data.name = "dvsgesture"  # tonic layout: ibmGestureTrain|Test/userNN_<lighting>/<class>.npy
    config.data.augment.padding = 10  # RandomCrop(128, padding=10)
    config.data.augment.max_degrees = 15.0  # RandomRotation(15)
    config.data.augment.hflip = False  # left/right-hand gestures would swap
    config.data.augment.crop_size = 0  # the crop keeps 128 x 128
    return config
