"""The `python -m anon_jax.anonymize` command end to end: a generated recording and a public Event-ReId chunk,
anonymised with a saved anonymizer and checked window by window against an independent computation."""

import io
import math

import jax
import numpy as np
import pytest

from anon_jax import anonymize
from anon_jax.data.event_reid import voxelize_chunk_file
from anon_jax.events import Events, EventStream, chunk_voxel_grid, read_event_text, write_event_text
from anon_jax.models import anonymizer
from anon_jax.progress import ProgressBar
from tests import event_files

HEIGHT, WIDTH, BINS = 16, 12, 5
DURATION = 33300.0  # microseconds, the synthetic data's chunk length
TIME_VOXEL = {"num_bins": BINS, "height": HEIGHT, "width": WIDTH, "partition_mode": "time",
              "chunk_duration": DURATION, "chunk_count": 5000}
NUM_EVENTS = 3000
KEYS = {"voxels", "t_start", "t_end", "num_events", "bbox", "chunk_index"}


@pytest.fixture(scope="module")
def params():
    """Random published-anonymizer parameters inside PyTorch's init bounds (no Flax init to compile)."""
    rng = np.random.default_rng(0)
    shapes = anonymizer.abstract_params(anonymizer.anonymizer_config())
    fan_in = {name: math.prod(layer["kernel"].shape[:3]) for name, layer in shapes.items()}
    return {name: {field: rng.uniform(-1, 1, layer[field].shape).astype(np.float32) / math.sqrt(fan_in[name])
                   for field in layer} for name, layer in shapes.items()}


@pytest.fixture(scope="module")
def apply_anonymizer():
    module = anonymizer.PublishedAnonymizer(num_bins=BINS)
    return jax.jit(lambda params, voxels: module.apply({"params": params}, voxels))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, params):
    """A main-job workdir whose joint training saved its anonymizer with constant-time windows."""
    workdir = tmp_path_factory.mktemp("workdir")
    anonymizer.save_pretrained(workdir / "anonymizer", anonymizer.anonymizer_config(), params, voxel=TIME_VOXEL)
    return workdir


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """~0.2 s of events on a 40x60 sensor with a 70 ms silence (longer than two windows) in the middle."""
    rng = np.random.default_rng(1)
    # Distinct times, so a window is exactly the events between its first and last; the clock starts at 1 s.
    t = np.concatenate([rng.choice(90_000, NUM_EVENTS * 2 // 3, replace=False),
                        rng.choice(np.arange(160_000, 200_000), NUM_EVENTS // 3, replace=False)])
    t = np.sort(t) + 1e6 + 0.125
    stream = EventStream(x=rng.integers(5, 55, NUM_EVENTS), y=rng.integers(3, 37, NUM_EVENTS), t=t,
                         p=rng.integers(0, 2, NUM_EVENTS), height=40, width=60)
    path = tmp_path_factory.mktemp("recording") / "events.txt"
    write_event_text(path, stream, header=True)
    return path


def run(args, capsys) -> tuple[int, str]:
    code = anonymize.main([str(arg) for arg in args])
    return code, capsys.readouterr().err


def expected_voxels(apply_anonymizer, params, x, y, t, p) -> np.ndarray:
    """anonymizer(chunk_voxel_grid(window)) for one window, in NHWC."""
    window = EventStream(x=x, y=y, t=t, p=p, height=40, width=60)
    grid = chunk_voxel_grid(window, num_bins=BINS, height=HEIGHT, width=WIDTH).transpose(1, 2, 0)
    return np.asarray(apply_anonymizer(params, grid[None]))[0]


def test_workdir_form_time_windows(workdir, recording, params, apply_anonymizer, tmp_path, capsys):
    out = tmp_path / "anonymised.npz"
    code, err = run(["--checkpoint", workdir, "--events", recording, "--out", out, "--batch_size", 3], capsys)
    assert code == 0, err
    assert f"/{len(np.load(out)['chunk_index'])} windows" in err and "windows/s" in err and "ETA" in err
    with np.load(out) as saved:
        result = {key: saved[key] for key in saved.files}
    assert set(result) == KEYS
    count = len(result["chunk_index"])
    assert result["voxels"].shape == (count, HEIGHT, WIDTH, BINS) and result["voxels"].dtype == np.float32
    assert result["t_start"].dtype == result["t_end"].dtype == np.float64
    assert result["num_events"].dtype == result["chunk_index"].dtype == np.int64
    assert result["bbox"].shape == (count, 4) and result["bbox"].dtype == np.int32
    stream = read_event_text(recording)
    # Windows end at t0 + k * 33.3 ms. The first event after the silence (at ~160 ms) closes window 2 (ends at
    # 99.9 ms) and the next one closes window 3 (ends at 133.2 ms) empty; windows 4, 5, 6 end at 166.5, 199.8 and
    # 233.1 ms. So 7 windows, all but window 3 written.
    assert stream.t[0] < 1e6 + 200
    index = result["chunk_index"]
    np.testing.assert_array_equal(index, [0, 1, 2, 4, 5, 6])
    # Each window closes on an event that the original partition drops; all others are written once.
    assert NUM_EVENTS - result["num_events"].sum() == index[-1]
    assert np.all(result["t_end"] - result["t_start"] <= DURATION)
    assert np.all(result["t_end"][:-1] < result["t_start"][1:])
    assert result["t_start"][0] == stream.t[0] and result["t_end"][-1] == stream.t[-1]
    for row in range(count):
        inside = (stream.t >= result["t_start"][row]) & (stream.t <= result["t_end"][row])
        assert inside.sum() == result["num_events"][row]
        x, y = stream.x[inside], stream.y[inside]
        np.testing.assert_array_equal(result["bbox"][row], [x.min(), y.min(), x.max(), y.max()])
        np.testing.assert_allclose(
            result["voxels"][row], expected_voxels(apply_anonymizer, params, x, y, stream.t[inside], stream.p[inside]),
            atol=1e-6, rtol=0)
    assert np.all((result["voxels"] > 0) & (result["voxels"] < 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anonymised.npz"]  # no temporary left behind


def test_direct_form_count_windows(recording, params, tmp_path, capsys):
    checkpoint = tmp_path / "saved"
    voxel = {**TIME_VOXEL, "partition_mode": "count", "chunk_duration": None, "chunk_count": 500}
    anonymizer.save_pretrained(checkpoint, anonymizer.anonymizer_config(), params, voxel=voxel)
    out = tmp_path / "out.npz"
    code, err = run(["--checkpoint", checkpoint, "--events", recording, "--out", out, "--batch_size", 4], capsys)
    assert code == 0, err
    stream = read_event_text(recording)
    with np.load(out) as result:
        # Original count partition: events 0..500, then 499 after each dropped closing event (501, 1001, ...).
        np.testing.assert_array_equal(result["num_events"], [501, 499, 499, 499, 499, 498])
        np.testing.assert_array_equal(result["chunk_index"], np.arange(6))
        np.testing.assert_array_equal(result["t_start"], stream.t[[0, 502, 1002, 1502, 2002, 2502]])
        np.testing.assert_array_equal(result["t_end"], stream.t[[500, 1000, 1500, 2000, 2500, 2999]])
        np.testing.assert_array_equal(result["bbox"][1], [stream.x[502:1001].min(), stream.y[502:1001].min(),
                                                          stream.x[502:1001].max(), stream.y[502:1001].max()])
        assert result["voxels"].shape == (6, HEIGHT, WIDTH, BINS)


def test_event_reid_chunk_matches_training_pipeline(event_reid_sample_dir, params, apply_anonymizer, tmp_path, capsys):
    """A header-less public chunk as one window: the same voxels as the training loader, anonymised."""
    chunk = event_reid_sample_dir / "train" / "001_c1_048.txt"
    checkpoint = tmp_path / "saved"
    anonymizer.save_pretrained(checkpoint, anonymizer.anonymizer_config(), params,
                               voxel={**TIME_VOXEL, "chunk_duration": 1e12})
    out = tmp_path / "out.npz"
    code, err = run(["--checkpoint", checkpoint, "--events", chunk, "--out", out], capsys)
    assert code == 0, err
    stream = read_event_text(chunk)
    grid = voxelize_chunk_file(chunk, num_bins=BINS, height=HEIGHT, width=WIDTH)
    with np.load(out) as result:
        np.testing.assert_allclose(result["voxels"], np.asarray(apply_anonymizer(params, grid[None])), atol=1e-6,
                                   rtol=0)
        np.testing.assert_array_equal(result["num_events"], [len(stream)])
        np.testing.assert_array_equal(result["chunk_index"], [0])
        np.testing.assert_array_equal(result["bbox"], [[stream.x.min(), stream.y.min(),
                                                        stream.x.min() + 80, stream.y.min() + 163]])  # 164x81 box


def test_errors_name_the_input(workdir, recording, tmp_path, capsys):
    out = tmp_path / "out.npz"
    bad = tmp_path / "bad_events.txt"
    bad.write_text("60 40\n1000.0 3 4 1\n1001.5 3 4\n")
    code, err = run(["--checkpoint", workdir, "--events", bad, "--out", out], capsys)
    assert code == 2 and f"{bad}:3: expected 4 values" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("60 40\n")
    code, err = run(["--checkpoint", workdir, "--events", empty, "--out", out], capsys)
    assert code == 2 and f"{empty}: the file holds no events" in err
    code, err = run(["--checkpoint", workdir, "--events", tmp_path / "none.txt", "--out", out], capsys)
    assert code == 2 and "none.txt: no such event file" in err
    code, err = run(["--checkpoint", tmp_path, "--events", recording, "--out", out], capsys)
    assert code == 2 and f"{tmp_path / 'anonymizer' / 'anonymizer.json'}" in err
    code, err = run(["--checkpoint", workdir, "--events", recording, "--out", out, "--batch_size", 0], capsys)
    assert code == 2 and "--batch_size must be at least 1" in err
    assert not out.exists()


def test_progress_bar_text():
    stream = io.StringIO()
    bar = ProgressBar(4, width=8, every_s=3600, stream=stream)
    bar.update(1)  # not a terminal and within every_s: nothing yet
    assert stream.getvalue() == ""
    bar.update(4)
    line = stream.getvalue()
    assert line.startswith("anonymize: [########] 4/4 windows, ") and line.endswith(" windows/s, ETA 0s\n")


def test_every_event_file_format_anonymises_like_text(workdir, tmp_path, capsys):
    rng = np.random.default_rng(9)
    n = 600
    recording = Events(t=np.sort(rng.integers(10**6, 10**6 + 150_000, n)), x=rng.integers(5, 55, n),
                       y=rng.integers(3, 37, n), p=rng.integers(0, 2, n), width=60, height=40)
    results = {}
    for suffix in event_files.FORMATS:
        path = tmp_path / f"recording{suffix}"
        event_files.write_events(path, recording)
        out = tmp_path / f"anonymised{suffix}.npz"
        code, err = run(["--checkpoint", workdir, "--events", path, "--out", out, *event_files.read_options(path)],
                        capsys)
        assert code == 0, (suffix, err)
        with np.load(out) as saved:
            results[suffix] = {key: saved[key] for key in saved.files}
    assert len(results[".txt"]["chunk_index"]) == 5  # 150 ms of 33.3 ms windows
    for suffix, result in results.items():
        for key in KEYS:
            np.testing.assert_array_equal(result[key], results[".txt"][key], err_msg=f"{suffix} {key}")
