"""Flax Linen networks: ReId backbones and heads (more architectures join as methods land)."""
