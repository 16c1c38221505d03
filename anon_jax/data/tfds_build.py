"""What the TFDS builders' command lines share: run a build, print where it went and its split sizes, or the
error."""

from __future__ import annotations

import logging
import sys
from typing import Callable

import tensorflow_datasets as tfds


def run_build(build: Callable[[], tfds.core.DatasetBuilder]) -> int:
    """Calls `build()`; prints `<name>/<config> in <dir>` and one `split: count` line, or `error: ...` for a
    ValueError (bad input). Returns the exit status (0 or 2)."""
    logging.basicConfig(level=logging.INFO)
    try:
        builder = build()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{builder.name}/{builder.builder_config.name} in {builder.data_dir}")
    for name, split in builder.info.splits.items():
        print(f"{name}: {split.num_examples}")
    return 0
