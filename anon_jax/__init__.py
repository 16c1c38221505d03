"""anon_jax: privacy-preserving person re-identification in JAX/Flax."""

__version__ = "0.1.0"
