"""Shared test fixtures: the public Event-ReId sample and AnonyNoise protocol files from ../shared/data."""

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Compilation dominates the suite on CPU: share compiled programs between tests and the subprocesses they
# start (set before JAX is imported; subprocesses inherit the environment).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO_ROOT / ".jax_cache"))
SHARED_DATA = pathlib.Path(os.environ.get("ANON_JAX_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _shared(name: str) -> pathlib.Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is missing: the tests need the project's shared data beside the checkout "
            "(../shared/data) or ANON_JAX_SHARED_DATA pointing at it."
        )
    return path


@pytest.fixture(scope="session")
def event_reid_sample_dir() -> pathlib.Path:
    """The public Event-ReId sample: train/, test/ and the three list files."""
    return _shared("event_reid_sample")


@pytest.fixture(scope="session")
def anonynoise_protocol_dir() -> pathlib.Path:
    return _shared("anonynoise_protocol")
