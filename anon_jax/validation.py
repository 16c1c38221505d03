"""Checks shared by config and argument validation."""

import numbers


def is_positive_int(value) -> bool:
    """True for integers >= 1 (Python or NumPy), False for bools, floats and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1
