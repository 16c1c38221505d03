"""Orbax checkpoints of a train-state pytree, with automatic resume from the workdir."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from absl import logging


class CheckpointMismatchError(ValueError):
    """A saved train state does not have the structure the current config builds."""


class Checkpoints:
    """A `CheckpointManager` in `directory` that restores the latest step into a template state."""

    def __init__(self, directory: str, *, max_to_keep: int = 2, save_every_steps: int = 1000):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, save_interval_steps=save_every_steps, create=True
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore_or(self, state):
        """Returns the latest saved state (shaped and sharded like `state`), else `state` itself."""
        step = self.manager.latest_step()
        if step is None:
            return state
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
        try:
            restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except ValueError as error:
            raise CheckpointMismatchError(
                f"The checkpoint at step {step} in {self.directory} does not fit the current config (a changed model, "
                f"optimizer or method?): rerun with the config that wrote it, or delete {self.directory} (or use a "
                f"new --workdir) to start this stage afresh. Details: {str(error)[:500]}") from error
        logging.info("Resumed from checkpoint step %d in %s", step, self.directory)
        return restored

    def save(self, step: int, state, *, force: bool = False) -> bool:
        """Saves when `step` is on the save interval (or `force`); returns whether it saved."""
        saved = self.manager.save(step, args=ocp.args.StandardSave(state), force=force)
        if saved:
            logging.info("Saving checkpoint at step %d", step)
        return saved

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
