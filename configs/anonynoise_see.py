"""AnonyNoise on SEE (single-eye event frames as jpg per emotion), the published settings: target = emotion
(7 classes), identity = volunteer (78 training identities, 20 unseen, split from see_metadata.json).

    python -m anon_jax.main --config=configs/anonynoise_see.py --workdir=W \
        --config.data.root=/data/SEE --config.data.protocol_dir=/data/anonynoise_protocol
"""

from configs import anonynoise


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/anonynoise_see.py has no variant {arg!r}; it holds the published settings.")
    config = anonynoise.base_config()
    config.data.name = "see"  # <root>/event/<emotion>/<sequence>/NNNNN.jpg
    config.data.augment.padding = 15  # RandomCrop(180, padding=15)
    config.data.augment.crop_size = 180  # training crops of 180 x 180 (evaluation sees the full frames)
    config.data.augment.hflip = True  # RandomHorizontalFlip(0.5)
    config.data.augment.max_degrees = 15.0  # RandomRotation(15)
    return config
