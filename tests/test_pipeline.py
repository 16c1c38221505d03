"""Tests of the host-side input pipeline: samplers, process slices, resumable iteration, prefetch."""

import functools
import itertools
import threading
import time

import numpy as np
import pytest

from anon_jax.data import pipeline


def test_shuffled_batches_deterministic_and_complete():
    a = pipeline.shuffled_batches(10, 3, seed=7, epoch=2)
    b = pipeline.shuffled_batches(10, 3, seed=7, epoch=2)
    assert len(a) == 3 and all(len(batch) == 3 for batch in a)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    flat = np.concatenate(a)
    assert len(set(flat.tolist())) == 9  # drop_last drops one example, no repeats
    other_epoch = np.concatenate(pipeline.shuffled_batches(10, 3, seed=7, epoch=3))
    assert not np.array_equal(flat, other_epoch)
    full = pipeline.shuffled_batches(10, 3, seed=7, epoch=2, drop_last=False)
    assert [len(batch) for batch in full] == [3, 3, 3, 1]
    assert sorted(np.concatenate(full).tolist()) == list(range(10))


def test_shuffled_batches_rejects_oversized_batch():
    with pytest.raises(ValueError, match="exceeds"):
        pipeline.shuffled_batches(4, 8, seed=0, epoch=0)


def test_pk_batches_composition():
    # identity 30 has only two examples, so it must be drawn with replacement.
    labels = np.array([10] * 5 + [20] * 4 + [30] * 2 + [40] * 6 + [50] * 3)
    batches = pipeline.pk_batches(labels, p=2, k=3, seed=1, epoch=0)
    assert len(batches) == 2  # 5 identities // P=2
    used = []
    for batch in batches:
        assert batch.shape == (6,)
        groups = labels[batch].reshape(2, 3)
        assert (groups == groups[:, :1]).all()  # K consecutive instances of one identity
        assert groups[0, 0] != groups[1, 0]
        for group, idx in zip(groups[:, 0], batch.reshape(2, 3)):
            if group != 30:  # enough instances: drawn without replacement
                assert len(set(idx.tolist())) == 3
            else:
                assert set(idx.tolist()) <= {9, 10}
        used += groups[:, 0].tolist()
    assert len(set(used)) == 4  # each identity at most once per epoch
    again = pipeline.pk_batches(labels, p=2, k=3, seed=1, epoch=0)
    for x, y in zip(batches, again):
        np.testing.assert_array_equal(x, y)


def test_pk_batches_needs_p_identities():
    with pytest.raises(ValueError, match="at least p=3"):
        pipeline.pk_batches(np.array([0, 0, 1]), p=3, k=2, seed=0, epoch=0)


def test_process_slices_partition_global_batch():
    batch = np.arange(100, 112)
    parts = [pipeline.process_slice(batch, i, 4) for i in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts), batch)
    np.testing.assert_array_equal(parts[1], [103, 104, 105])
    with pytest.raises(ValueError, match="divisible"):
        pipeline.process_slice(batch, 0, 5)


def test_resume_matches_uninterrupted_iteration():
    arrays = {"x": np.arange(20) * 10, "label": np.arange(20) % 5}
    sampler = functools.partial(pipeline.pk_batches, arrays["label"], 2, 2, seed=3)
    steps_per_epoch = len(sampler(epoch=0))
    assert steps_per_epoch == 2
    full = list(pipeline.batch_iterator(arrays, sampler, end_step=7))
    resumed = list(pipeline.batch_iterator(arrays, sampler, start_step=3, end_step=7))
    assert len(full) == 7 and len(resumed) == 4
    for x, y in zip(full[3:], resumed):
        np.testing.assert_array_equal(x["x"], y["x"])
        np.testing.assert_array_equal(x["label"], y["label"])
    # step 5 is batch 1 of epoch 2
    expected = sampler(epoch=2)[1]
    np.testing.assert_array_equal(full[5]["x"], arrays["x"][expected])
    # epochs differ
    assert not np.array_equal(full[0]["x"], full[2]["x"])


def test_batch_iterator_process_slices():
    arrays = {"x": np.arange(16)}
    sampler = functools.partial(pipeline.shuffled_batches, 16, 8, seed=0)
    global_batches = list(pipeline.batch_iterator(arrays, sampler, end_step=3))
    per_process = [list(pipeline.batch_iterator(arrays, sampler, end_step=3, process_index=i, process_count=2))
                   for i in range(2)]
    for step in range(3):
        joined = np.concatenate([per_process[i][step]["x"] for i in range(2)])
        np.testing.assert_array_equal(joined, global_batches[step]["x"])


def test_prefetch_preserves_order_and_errors():
    assert list(pipeline.prefetch(iter(range(10)), size=2)) == list(range(10))

    def failing():
        yield 1
        raise RuntimeError("broken source")

    stream = pipeline.prefetch(failing())
    assert next(stream) == 1
    with pytest.raises(RuntimeError, match="broken source"):
        next(stream)


def test_prefetch_close_stops_infinite_source():
    stream = pipeline.prefetch(itertools.count(), size=3)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()  # must not hang


def test_prefetch_close_waits_for_the_item_in_hand():
    # A producer busy with its next item when the consumer closes (a device transfer, say) must be finished before
    # close returns: a thread still inside native code at interpreter exit aborts the process.
    finished = []

    def slow():
        for index in itertools.count():
            time.sleep(0.2)
            finished.append(index)
            yield index

    stream = pipeline.prefetch(slow(), size=1)
    assert next(stream) == 0
    stream.close()
    assert not any(thread.name == "prefetch" and thread.is_alive() for thread in threading.enumerate())


def test_batch_iterator_follows_epochs_of_varying_length():
    labels = np.repeat(np.arange(6), [3, 5, 8, 4, 9, 6])
    arrays = {"x": np.arange(len(labels))}
    sampler = functools.partial(pipeline.identity_groups_batches, labels, 2, 2, seed=1)
    starts = pipeline.epoch_start_steps(sampler, 4)
    lengths = [len(sampler(epoch=e)) for e in range(4)]
    assert len(set(lengths)) > 1  # the sampler's epochs differ in length
    np.testing.assert_array_equal(starts, np.concatenate([[0], np.cumsum(lengths)]))
    full = list(pipeline.batch_iterator(arrays, sampler, end_step=int(starts[-1])))
    expected = [batch for e in range(4) for batch in sampler(epoch=e)]
    assert len(full) == len(expected)
    for got, batch in zip(full, expected):
        np.testing.assert_array_equal(got["x"], batch)
    # Resuming inside epoch 2 gives the same batches as the uninterrupted run.
    resume = int(starts[2]) + 1
    resumed = list(pipeline.batch_iterator(arrays, sampler, start_step=resume, end_step=int(starts[-1])))
    for got, want in zip(resumed, full[resume:]):
        np.testing.assert_array_equal(got["x"], want["x"])


def test_batch_iterator_rejects_an_empty_epoch():
    with pytest.raises(pipeline.PipelineError, match="no batches in epoch 0"):
        next(pipeline.batch_iterator({"x": np.arange(4)}, lambda epoch: []))
