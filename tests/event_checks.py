"""Checks shared by the event reader tests: an EventFile's chunks gathered with their canonical dtypes asserted."""

import numpy as np

from anon_jax.events.container import DTYPES


def read_all(event_file, max_events=1 << 20):
    """All chunks of `event_file` joined; every chunk must hold exactly t, x, y, p in the canonical dtypes."""
    chunks = list(event_file.chunks(max_events))
    for chunk in chunks:
        assert set(chunk) == {"t", "x", "y", "p"}
        for name, values in chunk.items():
            assert values.dtype == DTYPES[name], name
    if not chunks:
        return {name: np.zeros(0, DTYPES[name]) for name in DTYPES}
    return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in DTYPES}


def assert_events(got, t, x, y, p):
    for name, expected in zip("txyp", (t, x, y, p)):
        np.testing.assert_array_equal(got[name], expected, err_msg=name)
