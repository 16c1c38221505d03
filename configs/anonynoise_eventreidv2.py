"""AnonyNoise's attack on EventReIDv2 (33 identities x 4 cameras, no target task): the anonymizer trained on another
dataset (e.g. by configs/anonynoise_dvsgesture.py) is loaded and frozen, a ReId network is trained on the clean
304x304 frames (the raw row), and attackers starting from it are post-trained on anonymised frames, with and without
the denoiser. ReId matches must come from another camera.

    python -m anon_jax.main --config=configs/anonynoise_eventreidv2.py --workdir=W \
        --config.data.root=/data/EventReIDv2 --config.data.protocol_dir=/data/anonynoise_protocol \
        --config.anonymizer.pretrained_dir=W_DVSG/anonymizer

The frames are cached as float32 (10 x 304 x 304 per chunk, about 3.7 MB): plan the host memory accordingly.
"""

from configs import anonynoise


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/anonynoise_eventreidv2.py has no variant {arg!r}; it holds the published settings.")
    config = anonynoise.base_config()
    config.data.name = "eventreidv2"  # chunk files <ID>_c<cam>_<NNN>.txt (rows t x y p) in train/ and test/
    config.data.size = 304  # chunks padded to square and resized to 304 x 304
    config.data.augment.padding = 25  # RandomCrop(304, padding=25)
    config.data.augment.hflip = True  # RandomHorizontalFlip(0.5)
    config.data.augment.max_degrees = 15.0  # RandomRotation(15)
    config.data.augment.crop_size = 0  # the crop keeps 304 x 304
    config.post.init = "pretrained"  # no pipeline ran here: attackers start from the ReId network of clean frames
    return config
