"""Import of published PyTorch checkpoints into Flax variables (E2VID: `python -m anon_jax.convert.e2vid`).

PyTorch is needed only to read the pickled checkpoints, and is imported only when one is read.
"""
