"""Layers shared by the networks, where PyTorch semantics must be matched exactly."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class BatchNorm(nn.Module):
    """PyTorch-exact BatchNorm over all axes but the last (NHWC or NC).

    Training normalises with the biased batch variance and blends the *unbiased* one into the running
    variance, `running = (1 - momentum) * running + momentum * batch` with PyTorch's momentum 0.1
    (Flax's own BatchNorm blends the biased variance, (n - 1) / n smaller). Evaluation uses the running
    statistics. Variables are named like Flax's (params scale/bias, batch_stats mean/var), so converted
    PyTorch weights map one to one. Under `jax.jit` with a batch sharded over devices the statistics are
    those of the global batch.
    """

    use_running_average: bool = False
    momentum: float = 0.1
    epsilon: float = 1e-5
    use_bias: bool = True
    use_scale: bool = True
    scale_init: Any = nn.initializers.ones
    bias_init: Any = nn.initializers.zeros
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        x32 = x.astype(jnp.float32)
        if not self.use_running_average:
            axes = tuple(range(x.ndim - 1))
            count = x32.size // features
            mean = jnp.mean(x32, axis=axes)
            var = jnp.mean(jnp.square(x32 - mean), axis=axes)
            if not self.is_initializing():
                unbiased = var * (count / max(count - 1, 1))
                running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
                running_var.value = (1 - self.momentum) * running_var.value + self.momentum * unbiased
        else:
            mean, var = running_mean.value, running_var.value
        y = (x32 - mean) * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
        if self.use_scale:
            y = y * self.param("scale", self.scale_init, (features,), jnp.float32)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (features,), jnp.float32)
        return y.astype(self.dtype)
