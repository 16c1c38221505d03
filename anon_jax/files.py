"""Atomic file writes: a reader or a killed run never sees a half-written file."""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import shutil


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike):
    """Yields a temporary sibling path to write; it replaces `path` only if the block succeeds."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_target(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yields an empty staging folder; on success it replaces `path` (an existing folder is swapped out whole)."""
    path = pathlib.Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    previous = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.old")
    staging.mkdir()
    try:
        yield staging
        if path.exists():
            os.replace(path, previous)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)
