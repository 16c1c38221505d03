"""Datasets, preparation tools, TFDS builders and host-side input pipelines."""
