"""Mixed precision: the config's compute dtype name resolved to the dtype models compute in.

Parameters, optimizer state and batch statistics stay float32 whatever the compute dtype; models cast their
outputs back to float32, so losses, SSIM and metrics are float32 too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ("float32", "bfloat16", "auto")
# bfloat16 runs on the matrix units of GPUs and TPUs; CPUs emulate it and get slower, not faster.
ACCELERATOR_BACKENDS = ("gpu", "tpu")


class ComputeDtypeError(ValueError):
    """A config names a compute dtype other than float32, bfloat16 or auto."""


def compute_dtype(name: str, *, field: str = "config.compute_dtype") -> jnp.dtype:
    """float32 or bfloat16 for `name`; "auto" means bfloat16 on a GPU or TPU backend and float32 on CPU."""
    if name == "auto":
        name = "bfloat16" if jax.default_backend() in ACCELERATOR_BACKENDS else "float32"
    if name == "float32":
        return jnp.dtype(jnp.float32)
    if name == "bfloat16":
        return jnp.dtype(jnp.bfloat16)
    raise ComputeDtypeError(f"{field}={name!r}: use one of {COMPUTE_DTYPES} (auto = bfloat16 on GPU/TPU, float32 "
                            "on CPU).")
