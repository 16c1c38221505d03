"""The published systems, one module each, exposing `train_and_evaluate(config, workdir)`."""
