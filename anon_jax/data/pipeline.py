"""Host-side input pipeline on in-memory NumPy arrays: epoch samplers (shuffled, P x K identity
balanced), per-process slices of the global batch, a resumable batch iterator and prefetching.
Every batch is a function of (seed, global step), so a resumed run sees the batches it would have seen.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

# A sampler maps an epoch number to that epoch's list of global batches (arrays of example indices).
Sampler = Callable[..., Sequence[np.ndarray]]


class PipelineError(ValueError):
    """Invalid sampler or batching arguments."""


def _epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    # Separate SeedSequence entropy per (seed, epoch, sampler kind): independent, reproducible streams.
    return np.random.default_rng([seed, epoch, stream])


def shuffled_batches(num_examples: int, batch_size: int, *, seed: int, epoch: int,
                     drop_last: bool = True) -> list[np.ndarray]:
    """One epoch of batches over a fresh permutation of range(num_examples)."""
    if batch_size < 1 or num_examples < 1:
        raise PipelineError(f"need num_examples >= 1 and batch_size >= 1, got {num_examples}, {batch_size}.")
    if drop_last and num_examples < batch_size:
        raise PipelineError(f"batch_size {batch_size} exceeds the {num_examples} examples with drop_last=True; "
                            "lower the batch size or set drop_last=False.")
    order = _epoch_rng(seed, epoch, 0).permutation(num_examples)
    stop = num_examples - num_examples % batch_size if drop_last else num_examples
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def _identity_index(labels, p: int, k: int) -> tuple[int, np.ndarray]:
    """(number of identities, each example's identity index 0..n-1) of P x K sampling's `labels`, checked."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise PipelineError(f"labels must be 1-D, got shape {labels.shape}.")
    if p < 1 or k < 1:
        raise PipelineError(f"need p >= 1 and k >= 1, got p={p}, k={k}.")
    identities, inverse = np.unique(labels, return_inverse=True)
    if len(identities) < p:
        raise PipelineError(f"P x K sampling needs at least p={p} identities, the labels have {len(identities)}.")
    return len(identities), inverse


def pk_batches(labels: np.ndarray, p: int, k: int, *, seed: int, epoch: int) -> list[np.ndarray]:
    """One epoch of P x K batches: identities in random order, P per batch, K instances each.

    Each identity appears in one batch per epoch (len = num_identities // p, the remainder
    dropped); its K instances are drawn without replacement, or with replacement when it has fewer
    than K. A batch lists the K instances of its first identity, then of its second, and so on.
    """
    num_identities, inverse = _identity_index(labels, p, k)
    members = [np.flatnonzero(inverse == i) for i in range(num_identities)]
    rng = _epoch_rng(seed, epoch, 1)
    order = rng.permutation(num_identities)
    picks = [rng.choice(members[i], size=k, replace=len(members[i]) < k) for i in order]
    return [np.concatenate(picks[b:b + p]) for b in range(0, len(order) - len(order) % p, p)]


def identity_groups_batches(labels: np.ndarray, p: int, k: int, *, seed: int, epoch: int) -> list[np.ndarray]:
    """One epoch of P x K batches as the ReId baselines' RandomIdentitySampler (AGW, privacy-reid) draws them.

    Each identity's examples are shuffled (an identity with fewer than K is first resampled with replacement to
    exactly K) and cut into groups of K, the remainder dropped. While at least P identities have groups left, P
    distinct ones are drawn at random and each gives its next group. An identity thus appears in as many batches as
    it has groups, and the number of batches varies from epoch to epoch (batch_iterator follows it).
    """
    _, inverse = _identity_index(labels, p, k)
    rng = _epoch_rng(seed, epoch, 2)
    by_identity = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
    groups = []
    for members in by_identity:
        if len(members) < k:
            members = rng.choice(members, size=k, replace=True)
        members = rng.permutation(members)
        groups.append(members[:len(members) - len(members) % k].reshape(-1, k))
    taken = np.zeros(len(groups), int)
    available = list(range(len(groups)))
    batches = []
    while len(available) >= p:
        chosen = [available[i] for i in rng.choice(len(available), size=p, replace=False)]
        batches.append(np.concatenate([groups[i][taken[i]] for i in chosen]))
        taken[chosen] += 1
        available = [i for i in available if taken[i] < len(groups[i])]
    return batches


def process_slice(global_batch_indices: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """The contiguous part of a global batch fed by process `process_index` of `process_count`."""
    size = len(global_batch_indices)
    if not 0 <= process_index < process_count:
        raise PipelineError(f"process_index {process_index} not in [0, {process_count}).")
    if size % process_count:
        raise PipelineError(f"global batch of {size} does not split evenly over {process_count} processes; "
                            "choose a batch size divisible by the process count.")
    per_process = size // process_count
    return global_batch_indices[process_index * per_process:(process_index + 1) * per_process]


def batch_iterator(
    arrays: Mapping[str, np.ndarray],
    sampler: Sampler,
    *,
    start_step: int = 0,
    end_step: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields `{name: array[batch]}` for global steps start_step, start_step+1, ... (< end_step).

    `sampler(epoch=e)` gives epoch e's global batches; the steps run through epoch 0's batches, then epoch 1's,
    and so on, so the batches depend only on the sampler's seed and the step, also when the number of batches
    varies from epoch to epoch (identity_groups_batches). Each process gets its contiguous slice of every global
    batch.
    """
    lengths = {name: len(array) for name, array in arrays.items()}
    if not lengths or len(set(lengths.values())) != 1:
        raise PipelineError(f"arrays must be a non-empty dict of equally long arrays, got lengths {lengths}.")
    epochs = _epochs(sampler)
    epoch_start, batches = next(epochs)
    while start_step >= epoch_start + len(batches):  # skip the epochs before start_step
        epoch_start, batches = next(epochs)
    step = start_step
    while end_step is None or step < end_step:
        if step == epoch_start + len(batches):
            epoch_start, batches = next(epochs)
        local = process_slice(batches[step - epoch_start], process_index, process_count)
        yield {name: np.asarray(array[local]) for name, array in arrays.items()}
        step += 1


def _epochs(sampler: Sampler) -> Iterator[tuple[int, list[np.ndarray]]]:
    """(first global step, batches) of epochs 0, 1, 2, ... of `sampler`."""
    epoch, epoch_start = 0, 0
    while True:
        batches = sampler(epoch=epoch)
        if not len(batches):
            raise PipelineError(f"the sampler yields no batches in epoch {epoch}; lower the batch size.")
        yield epoch_start, batches
        epoch, epoch_start = epoch + 1, epoch_start + len(batches)


def epoch_start_steps(sampler: Sampler, num_epochs: int) -> np.ndarray:
    """The global step at which each of epochs 0..num_epochs starts (num_epochs + 1 values; the last one is the
    total number of steps), as batch_iterator walks the epochs."""
    epochs = _epochs(sampler)
    return np.asarray([next(epochs)[0] for _ in range(num_epochs + 1)], np.int64)


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
    """Runs `iterator` in a background thread, keeping up to `size` items ready.

    Exceptions from the iterator are re-raised in the consumer; closing the returned generator
    stops the thread and waits for it (it finishes the item in hand), so no device transfer is still running in it
    when the interpreter exits (which aborts the process).
    """
    if size < 1:
        raise PipelineError(f"prefetch size must be >= 1, got {size}.")
    items: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                items.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterator:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as error:  # handed to the consumer, which re-raises it
            put(("error", error))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()
