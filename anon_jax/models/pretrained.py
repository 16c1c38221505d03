"""Orbax save/restore and shape checks shared by the models' save_pretrained / load_pretrained.

The errors here subclass ValueError and carry no file context: callers re-raise them with their own class and message.
"""

from __future__ import annotations

import json
import os
import pathlib

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointReadError(ValueError):
    """Orbax could not read a saved tree, or its structure differs from the target's."""


class CheckpointShapeError(ValueError):
    """A restored tree's shapes differ from the target's; the message lists them as 'path: saved vs expected'."""


def _shape_table(tree) -> dict[str, tuple]:
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")
    return {path: tuple(np.shape(value)) for path, value in flat.items()}


def shape_mismatches(expected, got) -> str:
    """"" when the two trees have the same paths and shapes, else "path: got vs expected, ..." sorted by path."""
    expected_shapes, got_shapes = _shape_table(expected), _shape_table(got)
    mismatched = sorted(p for p in set(expected_shapes) | set(got_shapes)
                        if expected_shapes.get(p) != got_shapes.get(p))
    return ", ".join(f"{p}: {got_shapes.get(p, 'missing')} vs {expected_shapes.get(p, 'not expected')}"
                     for p in mismatched)


def _this_process_checkpointer() -> ocp.StandardCheckpointer:
    """A checkpointer involving only this process: exported models are written by process 0 alone and read by
    every process on its own, not collectively like training checkpoints."""
    me = jax.process_index()
    return ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}))


def save_tree(path: str | os.PathLike, tree) -> None:
    """Writes `tree` (host copies of its arrays) as an Orbax checkpoint at `path` and waits for it to finish."""
    checkpointer = _this_process_checkpointer()
    try:
        checkpointer.save(pathlib.Path(path).absolute(), jax.device_get(flax.core.unfreeze(tree)))
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()


def restore_tree(path: str | os.PathLike, abstract_tree):
    """The tree saved at `path`, restored onto `abstract_tree`'s structure and checked against its shapes.

    Raises CheckpointReadError when Orbax fails and CheckpointShapeError when the saved shapes differ.
    """
    checkpointer = _this_process_checkpointer()
    try:
        tree = checkpointer.restore(pathlib.Path(path).absolute(), abstract_tree)
    except (ValueError, KeyError, OSError) as error:
        raise CheckpointReadError(str(error)) from error
    finally:
        checkpointer.close()
    # Orbax hands back the saved shapes even when they differ from the target's, so compare them here.
    mismatches = shape_mismatches(abstract_tree, tree)
    if mismatches:
        raise CheckpointShapeError(mismatches)
    return tree


def restore_saved(path: pathlib.Path, abstract_tree, *, what: str, config_file: str, error_class: type[Exception]):
    """`restore_tree` for a save_pretrained folder, every failure raised as `error_class` naming the folder:
    missing, unreadable, or with shapes that do not match the description in `config_file`."""
    if not path.is_dir():
        raise error_class(f"{path} is missing: the directory holds no saved {what}.")
    try:
        return restore_tree(path, abstract_tree)
    except CheckpointReadError as error:
        raise error_class(
            f"{path}: the saved {what} are unreadable or do not match {config_file} ({error}).") from error
    except CheckpointShapeError as error:
        raise error_class(
            f"{path}: the saved {what} do not match {config_file} (saved vs expected): {error}.") from error


def read_description(directory, config_file: str, *, checkpoint_format: str, what: str, writer: str,
                     error_class: type[Exception]) -> tuple[pathlib.Path, dict]:
    """(path, JSON document) of a save_pretrained folder's description `config_file`, checked to exist, to parse
    and to carry `checkpoint_format`; every failure raised as `error_class` naming the file and the `writer` that
    makes a valid one."""
    path = pathlib.Path(directory) / config_file
    if not path.is_file():
        raise error_class(f"{path} is missing: {directory} is not {what} directory written by {writer}.")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise error_class(f"{path}: not valid JSON ({error}); rewrite the directory with {writer}.") from error
    found = document.get("format") if isinstance(document, dict) else None
    if found != checkpoint_format:
        raise error_class(f"{path}: format {found!r}, expected {checkpoint_format!r}; it was not written by {writer} "
                          "(or by an incompatible version): save it again.")
    return path, document
