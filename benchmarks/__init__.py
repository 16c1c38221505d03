"""Benchmarks of anon_jax against the NumPy and PyTorch computations it replaces.

Run one with `python -m benchmarks.<name> [--quick] [--repeats N] [--out DIR]` from the repository root.
"""
