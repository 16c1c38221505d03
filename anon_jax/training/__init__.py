"""What every method shares: device mesh, checkpoints, the training loop, stages and reports."""
