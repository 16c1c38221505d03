"""E2VID post-processing (unsharp mask, intensity rescaling), the window-by-window reconstruction loop with a
fake model, and the `python -m anon_jax.reconstruct` command end to end with a tiny random E2VID."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from PIL import Image

from anon_jax import reconstruct
from anon_jax.events import (
    Events,
    EventStream,
    normalize_voxel_grid_numpy,
    read_event_text,
    voxel_grid_numpy,
    write_event_text,
)
from tests import event_files
from anon_jax.events.windows import fixed_count_windows
from anon_jax.models import e2vid
from anon_jax.models.e2vid_postprocess import (IntensityRescaler, reconstruct_stream, to_uint8, unsharp_kernel,
                                               unsharp_kernel_1d, unsharp_mask)


def gkern_reference(size=5, nsig=1.0) -> np.ndarray:
    """E2VID's gkern: sqrt of the outer product of standard-normal cell probabilities, normalised."""
    interval = (2 * nsig + 1.0) / size
    cells = np.diff(scipy.stats.norm.cdf(np.linspace(-nsig - interval / 2, nsig + interval / 2, size + 1)))
    kernel = np.sqrt(np.outer(cells, cells))
    return kernel / kernel.sum()


def test_unsharp_kernel_values():
    np.testing.assert_allclose(unsharp_kernel_1d(), [0.17418, 0.21238, 0.22689, 0.21238, 0.17418], atol=5e-6)
    kernel = unsharp_kernel()
    assert kernel.shape == (5, 5) and kernel.dtype == np.float32
    np.testing.assert_allclose(kernel[2, 2], 0.05148, atol=5e-6)
    np.testing.assert_allclose(kernel[[0, 0, 4, 4], [0, 4, 0, 4]], 0.03034, atol=5e-6)
    np.testing.assert_allclose(kernel.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(kernel, gkern_reference(), rtol=1e-6)


def test_unsharp_mask_by_hand_and_against_torch():
    kernel = unsharp_kernel().astype(np.float64)
    impulse = np.zeros((1, 7, 7, 1), np.float32)
    impulse[0, 3, 3, 0] = 1.0
    sharpened = np.asarray(unsharp_mask(impulse))[0, ..., 0]
    np.testing.assert_allclose(sharpened[3, 3], 1.3 - 0.3 * kernel[2, 2], rtol=1e-6)
    np.testing.assert_allclose(sharpened[3, 4], -0.3 * kernel[2, 3], rtol=1e-6)
    assert sharpened[0, 0] == 0  # outside the 5x5 support
    ones = np.asarray(unsharp_mask(np.ones((1, 9, 9, 1), np.float32)))[0, ..., 0]
    np.testing.assert_allclose(ones[4, 4], 1.0, rtol=1e-6)
    # Zero padding: the corner sees only the lower-right 3x3 quarter of the kernel.
    np.testing.assert_allclose(ones[0, 0], 1.3 - 0.3 * kernel[2:, 2:].sum(), rtol=1e-6)
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(2, 10, 12, 1)).astype(np.float32)
    blurred = F.conv2d(torch.tensor(images).permute(0, 3, 1, 2), torch.tensor(gkern_reference()).float()[None, None],
                       padding=2).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(unsharp_mask(images, amount=0.3)), 1.3 * images - 0.3 * blurred, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(unsharp_mask(images, amount=0.0)), images)


def test_to_uint8_truncates_like_torch_byte():
    values = np.array([-0.1, 0.0, 0.5, 0.999, 1.0, 1.2], np.float32)
    np.testing.assert_array_equal(to_uint8(values), [0, 0, 127, 254, 255, 255])
    # Same float32 arithmetic as E2VID's torch code: 0.4 lands at 254.99998, which truncates to 254.
    rng = np.random.default_rng(0)
    images = np.concatenate([[0.3, 0.35, 0.4], rng.uniform(0.2, 0.5, 1000)]).astype(np.float32)
    for imin, imax in ((0.3, 0.4), (float(np.median([0.01, 0.03])), 0.95)):
        expected = (255.0 * (torch.tensor(images) - imin) / (imax - imin)).clamp_(0.0, 255.0).byte().numpy()
        np.testing.assert_array_equal(to_uint8(images, imin, imax), expected)
    assert to_uint8(images[:3], 0.3, 0.4).tolist() == [0, 127, 254]
    with pytest.raises(ValueError, match="greater"):
        to_uint8(values, 0.5, 0.5)


def test_intensity_rescaler_auto_hdr_median_deque():
    rescaler = IntensityRescaler(auto_hdr=True, median_filter_size=10)
    lows = [0.02 * i for i in range(14)]  # 0.00 .. 0.26
    highs = [0.60 + 0.03 * i for i in range(14)]  # 0.60 .. 0.99
    for frame, (low, high) in enumerate(zip(lows, highs)):
        image = np.full((4, 4), 0.5, np.float32)
        image[0, 0], image[3, 3] = low, high
        bounds = rescaler.update(image)
        kept = slice(max(0, frame - 10), frame + 1)  # pops before appending once it holds more than 10
        assert len(rescaler.bounds_history) == min(frame + 1, 11)
        np.testing.assert_allclose(bounds, (np.median(lows[kept]), np.median(highs[kept])), rtol=1e-6)
    # Min/max are clipped so the range stays at least 0.1: min 0.48 -> 0.45 and max 0.52 -> 0.55.
    clipped = IntensityRescaler(auto_hdr=True)
    assert clipped.update(np.array([[0.48, 0.52]], np.float32)) == pytest.approx((0.45, 0.55))
    fixed = IntensityRescaler(imin=0.2, imax=0.6)
    np.testing.assert_array_equal(fixed(np.array([0.2, 0.4, 0.7], np.float32)), [0, 127, 255])
    assert fixed.bounds_history == type(fixed.bounds_history)()


@dataclasses.dataclass(frozen=True)
class AccumulatingModel:
    """Fake reconstructor with E2VID's apply contract: the state accumulates the voxels' bin sum."""

    def apply(self, variables, voxels, state, train=False):
        assert not train
        total = jnp.sum(voxels, axis=-1, keepdims=True)
        state = (total,) if state is None else (state[0] + total,)
        return jax.nn.sigmoid(variables["scale"] * state[0]), state


def expected_frames(windows, carry_state, scale=0.5):
    """NumPy replay of the loop for AccumulatingModel without unsharp mask: 5x6 sensor padded to 8x8."""
    frames, accumulated = [], 0
    for window in windows:
        grid = normalize_voxel_grid_numpy(voxel_grid_numpy(window.x, window.y, window.t, window.p, num_bins=3,
                                                           height=5, width=6))
        total = np.pad(grid.sum(0), ((2, 1), (1, 1)), mode="reflect")
        accumulated = accumulated + total if carry_state else total
        frames.append(to_uint8(1 / (1 + np.exp(-scale * accumulated)))[2:7, 1:7])
    return frames


@pytest.mark.parametrize("carry_state", [True, False])
def test_reconstruct_stream_carries_state_pads_and_crops(carry_state):
    rng = np.random.default_rng(5)
    n = 90
    stream = EventStream(x=rng.integers(0, 6, n), y=rng.integers(0, 5, n), t=np.sort(rng.uniform(0, 1, n)) + 7e8,
                         p=rng.integers(0, 2, n), height=5, width=6)
    windows = list(fixed_count_windows(stream, 40))
    frames = list(reconstruct_stream(AccumulatingModel(), {"scale": jnp.float32(0.5)}, windows, num_bins=3,
                                     num_encoders=2, unsharp_mask_amount=0.0, carry_state=carry_state))
    assert [f.index for f in frames] == [0, 1, 2]
    assert [f.num_events for f in frames] == [40, 40, 10]
    assert [f.timestamp for f in frames] == [stream.t[39], stream.t[79], stream.t[89]]
    for frame, expected in zip(frames, expected_frames(windows, carry_state)):
        assert frame.image.shape == (5, 6) and frame.image.dtype == np.uint8
        # Truncation to uint8 may flip by one level where float32 and float64 disagree at an integer boundary.
        assert np.abs(frame.image.astype(int) - expected).max() <= 1
        assert np.mean(frame.image == expected) > 0.9


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small randomly initialised E2VID saved with save_pretrained (shared: initialising compiles the model)."""
    config = e2vid.e2vid_config(base_channels=4, num_encoders=2, num_residual_blocks=1)
    module = e2vid.E2VID(config)
    variables = module.init(jax.random.key(0), jnp.zeros((1, 8, 8, config.num_bins)), None, train=False)
    directory = tmp_path_factory.mktemp("reconstructor") / "e2vid"
    e2vid.save_pretrained(directory, config, variables)
    return directory


def test_reconstruct_command_on_event_reid_chunk(event_reid_sample_dir, checkpoint, tmp_path):
    events = event_reid_sample_dir / "train" / "001_c1_048.txt"
    out = tmp_path / "frames"
    assert reconstruct.main(["--events", str(events), "--checkpoint", str(checkpoint), "--out", str(out),
                             "--auto_hdr"]) == 0
    # No header: the events' bounding box, 164 x 81 (Event-ReId loader); int(164 * 81 * 0.35) = 4649 events per
    # window gives 3 windows for the 10,250 events.
    stream = read_event_text(events)
    pngs = sorted(out.glob("frame_*.png"))
    assert [p.name for p in pngs] == [f"frame_{i:010d}.png" for i in range(3)]
    for png in pngs:
        with Image.open(png) as image:
            assert image.mode == "L" and image.size == (81, 164)
            assert np.ptp(np.asarray(image)) > 0
    stamps = [float(line) for line in (out / "timestamps.txt").read_text().splitlines()]
    assert stamps == [stream.t[4648], stream.t[9297], stream.t[-1]]
    with Image.open(out / "preview.gif") as gif:
        assert gif.n_frames == 3
    assert [p.name for p in tmp_path.iterdir()] == ["frames"]  # no staging folder left behind
    with pytest.raises(SystemExit, match="--overwrite"):
        reconstruct.main(["--events", str(events), "--checkpoint", str(checkpoint), "--out", str(out)])


def test_reconstruct_command_fixed_duration_with_header(checkpoint, tmp_path):
    # A recording with a `width height` header keeps its sensor size (no bounding-box shift).
    rng = np.random.default_rng(2)
    n = 400
    stream = EventStream(x=rng.integers(3, 10, n), y=rng.integers(2, 9, n), t=np.sort(rng.uniform(0, 1.0, n)),
                         p=rng.integers(0, 2, n), height=12, width=16)
    write_event_text(tmp_path / "events.txt", stream, header=True)
    out = tmp_path / "frames"
    reconstruct.main(["--events", str(tmp_path / "events.txt"), "--checkpoint", str(checkpoint), "--out", str(out),
                      "--window_duration", "0.3", "--unsharp_mask_amount", "0"])
    # Windows close at the first event later than stamp + 0.3; the unfinished tail is dropped.
    closes, stamp = [], stream.t[0]
    for t in stream.t:
        if t > stamp + 0.3:
            closes.append(t)
            stamp = t
    assert [float(line) for line in (out / "timestamps.txt").read_text().splitlines()] == closes
    assert len(list(out.glob("frame_*.png"))) == len(closes) >= 2
    with Image.open(out / "frame_0000000000.png") as image:
        assert image.size == (16, 12)


@pytest.mark.parametrize("suffix", [suffix for suffix in event_files.FORMATS if suffix != ".txt"])
def test_reconstruct_command_reads_every_format_like_text(checkpoint, tmp_path, suffix):
    rng = np.random.default_rng(5)
    n = 300
    recording = Events(t=np.sort(rng.integers(10**6, 2 * 10**6, n)), x=rng.integers(0, 16, n),
                       y=rng.integers(0, 12, n), p=rng.integers(0, 2, n), width=16, height=12)
    outputs = {}
    for name in (".txt", suffix):
        path = tmp_path / f"recording{name}"
        event_files.write_events(path, recording)
        out = tmp_path / f"frames{name}"
        assert reconstruct.main(["--events", str(path), "--checkpoint", str(checkpoint), "--out", str(out),
                                 "--num_events_per_window", "100", "--sensor_size", "12,16",
                                 *event_files.read_options(path)]) == 0
        outputs[name] = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix != ".gif"}
    assert list(outputs[suffix]) == ["frame_0000000000.png", "frame_0000000001.png", "frame_0000000002.png",
                                     "timestamps.txt"]
    assert outputs[suffix] == outputs[".txt"]


def test_reconstruct_command_reports_unreadable_files(checkpoint, tmp_path):
    path = tmp_path / "events.npy"
    np.save(path, np.zeros((3, 4)))
    with pytest.raises(SystemExit, match=r"reconstruct: error: .*events\.npy.*columns"):
        reconstruct.main(["--events", str(path), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"),
                          "--time_unit", "us"])
