"""Tests of the streaming simulator and the `python -m anon_jax.simulate` command on generated videos and images."""

import dataclasses
import fractions

import av
import jax
import numpy as np
import pytest
from PIL import Image

from anon_jax import simulate
from anon_jax.events.container import Events
from anon_jax.events.formats import read
from anon_jax.events.simulator import Simulator, SimulatorInputError, SimulatorParams, simulate_events, \
    simulate_events_with_stats

WIDTH, HEIGHT = 64, 48
# The command's defaults with --seed 3 (frame_pairs_per_call does not change the events).
CLI_PARAMS = SimulatorParams()
SEED = 3


def scene(k: int) -> np.ndarray:
    """Frame k (HEIGHT, WIDTH, 3) uint8: a bright bar moving 2 px per frame over a static gray checkerboard."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = 40 + 30 * ((xx // 4 + yy // 4) % 2)
    x0 = 6 + 2 * k
    image = np.where((xx >= x0) & (xx < x0 + 10) & (yy >= 12) & (yy < 36), 220, image)
    return np.repeat(image[..., None], 3, axis=-1).astype(np.uint8)  # gray: no chroma loss in yuv420p


def write_video(path, frames, *, rate=25, pts_ms=None):
    """Encodes RGB frames losslessly (x264 qp 0 in MP4, or FFV1 in Matroska); pts_ms gives explicit times."""
    codec = "libx264" if "libx264" in av.codecs_available else "ffv1"
    if codec == "ffv1":
        path = path.with_suffix(".mkv")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"qp": "0"} if codec == "libx264" else {}
        if pts_ms is not None:
            stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[index], fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode(path):
    """Independent decode: BT.601 luma of each frame in [0, 1] and PTS times in microseconds."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(np.asarray(frame.to_image().convert("L"), np.float32) / 255)
            times.append(float(frame.pts * stream.time_base) * 1e6)
    return np.stack(frames), np.asarray(times)


def reference_events(frames, times, seed=SEED, params=CLI_PARAMS):
    return Events.from_stream(simulate_events(frames, times, params, jax.random.key(seed)), "us")


def assert_same_events(got: Events, want: Events):
    assert got.sensor_size == want.sensor_size
    assert len(got) == len(want)
    for name in ("t", "x", "y", "p"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


def read_back(path) -> Events:
    return read(path, time_unit="us" if path.suffix == ".txt" else None)


def run(capsys, *argv):
    code = simulate.main([str(value) for value in argv])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "bar.mp4", [scene(k) for k in range(20)])


# ----------------------------------------------------------------------------------------------------------------
# Streaming simulator


def test_block_wise_simulation_equals_one_shot():
    rng = np.random.default_rng(0)
    frames = rng.uniform(0.02, 1.0, size=(26, 6, 7)).astype(np.float32)
    times = 5e8 + np.cumsum(rng.uniform(300.0, 3000.0, size=26))
    params = SimulatorParams(contrast_threshold_sigma=0.05, shot_noise_rate_hz=400.0, refractory_us=150.0,
                             max_events_per_pixel_per_frame=3, frame_pairs_per_call=4)
    key = jax.random.key(11)
    # The reference runs all 25 pairs in one compiled call, the blocks in segments of 4 pairs.
    whole, dropped = simulate_events_with_stats(frames, times, dataclasses.replace(params, frame_pairs_per_call=64),
                                                key)
    assert len(whole) > 1000 and dropped > 0  # exercises noise, refractory period and the cap
    for sizes in ([1, 2, 5, 3, 8, 7], [1] * 26, [26]):
        simulator = Simulator(params, key)
        bounds = np.cumsum([0] + sizes)
        parts = [simulator.push(frames[a:b], times[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        parts.append(simulator.finish())
        for before, after in zip(parts[:-1], parts[1:]):
            if len(before) and len(after):
                assert after.t[0] >= before.t[-1]
        t = np.concatenate([part.t for part in parts])
        for name in ("x", "y", "p"):
            np.testing.assert_array_equal(np.concatenate([getattr(part, name) for part in parts]),
                                          getattr(whole, name))
        np.testing.assert_array_equal(t, whole.t)
        assert simulator.dropped == dropped and simulator.num_frames == 26 and simulator.num_pairs == 25


def test_events_past_the_newest_frame_wait_for_the_next_block():
    # Each pixel rises exactly 2 thresholds in the first 333.33 us interval: the crossing at the new level gets a
    # float32 relative time that can land just after the frame time, where the next pair's events may start.
    rng = np.random.default_rng(0)
    first = rng.uniform(0.05, 0.3, size=(32, 32)).astype(np.float32)
    second = (np.exp(np.log(1e-3 + first.astype(np.float64)) + 0.4) - 1e-3).astype(np.float32)
    frames = np.stack([first, second, second, first])
    times = np.array([0.0, 1000 / 3, 2000 / 3, 1000.0])
    params = SimulatorParams(contrast_threshold_sigma=0.0, frame_pairs_per_call=1)
    whole = simulate_events(frames, times, params, jax.random.key(0))
    late = np.sum((whole.t > times[1]) & (whole.t < times[2]))
    assert late > 10  # pair 0 events after frame 1's time (the second pair is static)

    simulator = Simulator(params, jax.random.key(0))
    head = simulator.push(frames[:2], times[:2])
    assert len(head) == np.sum(whole.t <= times[1])
    assert head.t[-1] <= times[1]
    rest = [simulator.push(frames[2:], times[2:]), simulator.finish()]
    assert rest[0].t[0] > times[1]
    np.testing.assert_array_equal(np.concatenate([head.t] + [part.t for part in rest]), whole.t)
    np.testing.assert_array_equal(np.concatenate([head.x] + [part.x for part in rest]), whole.x)


def test_simulator_rejects_inconsistent_blocks():
    frames = np.full((3, 4, 5), 0.5, np.float32)
    simulator = Simulator(SimulatorParams(), jax.random.key(0))
    simulator.push(frames, [0.0, 1.0, 2.0])
    with pytest.raises(SimulatorInputError, match="same size"):
        simulator.push(np.zeros((2, 4, 6), np.float32), [3.0, 4.0])
    with pytest.raises(SimulatorInputError, match="increasing across blocks"):
        simulator.push(frames, [2.0, 3.0, 4.0])
    assert len(simulator.finish()) == 0
    with pytest.raises(SimulatorInputError, match="after finish"):
        simulator.push(frames, [5.0, 6.0, 7.0])
    with pytest.raises(SimulatorInputError, match="before any frames"):
        Simulator(SimulatorParams(), jax.random.key(0)).finish()


def test_interpolate_blends_intensity_at_even_times():
    frames = np.array([[[0.0]], [[0.6]], [[0.3]]], np.float32)
    times = np.array([0.0, 300.0, 600.0])
    out, out_times = simulate.interpolate(None, frames[:2], times[:2], 3)
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 0.2, 0.4, 0.6], atol=1e-7)
    np.testing.assert_allclose(out_times, [0.0, 100.0, 200.0, 300.0])
    # The next block continues from the previous block's last frame and does not repeat it.
    out, out_times = simulate.interpolate((frames[1], times[1]), frames[2:], times[2:], 3)
    np.testing.assert_allclose(out[:, 0, 0], [0.5, 0.4, 0.3], atol=1e-7)
    np.testing.assert_allclose(out_times, [400.0, 500.0, 600.0])
    assert simulate.interpolate(None, frames, times, 1)[0] is frames


def test_gray_conversion_is_bt601_luma_and_keeps_16_bit_precision():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 30]]], np.uint8)
    # Pillow's L: (299 R + 587 G + 114 B) / 1000, rounded.
    np.testing.assert_allclose(simulate.to_gray(Image.fromarray(rgb)) * 255, [[76, 150, 29, 124]], atol=1e-4)
    deep = np.array([[0, 1, 40000, 65535]], np.uint16)
    gray = simulate.to_gray(Image.fromarray(deep))
    np.testing.assert_allclose(gray, deep / 65535, rtol=1e-6)
    assert simulate.output_size(64, 48, None, 24) == (32, 24) and simulate.output_size(64, 48, 10, None) == (10, 8)


# ----------------------------------------------------------------------------------------------------------------
# The command


def test_video_events_equal_the_simulator_on_the_decoded_frames(video, tmp_path, capsys):
    out = tmp_path / "events.h5"
    code, err = run(capsys, "--video", video, "--out", out, "--seed", SEED)
    assert code == 0, err
    events = read_back(out)
    frames, times = decode(video)
    np.testing.assert_allclose(times, 40000.0 * np.arange(20))  # 25 fps from the PTS
    assert_same_events(events, reference_events(frames, times))
    # Plausible: only the bar's edges fire (lossless video, static background), both polarities, in time.
    assert len(events) > 2000
    assert 6 <= events.x.min() and events.x.max() < 6 + 2 * 19 + 10
    assert 12 <= events.y.min() and events.y.max() < 36
    assert 0.3 < events.p.mean() < 0.7
    assert 0 < events.t[0] and events.t[-1] <= 760000
    assert "20 frames (19 frame pairs simulated) on a 64x48 sensor" in err
    assert "simulate: [" in err and "20/20 frames" in err  # the progress bar

    # --interpolate 2: a blended frame halfway in every interval, 38 simulated pairs.
    out2 = tmp_path / "interpolated.txt"
    code, err = run(capsys, "--video", video, "--out", out2, "--seed", SEED, "--interpolate", 2)
    assert code == 0, err
    assert "20 frames (38 frame pairs simulated)" in err
    halfway = ((frames[:-1].astype(np.float64) + frames[1:]) / 2).astype(np.float32)
    fine = np.stack([frames[:-1], halfway], axis=1).reshape(-1, HEIGHT, WIDTH)
    fine_times = np.stack([times[:-1], times[:-1] + 20000.0], axis=1).reshape(-1)
    expected = reference_events(np.concatenate([fine, frames[-1:]]), np.append(fine_times, times[-1]))
    assert_same_events(read_back(out2), expected)
    # Fewer crossings per pair: fewer events dropped over the cap.
    assert len(read_back(out2)) > len(events)


def test_video_times_come_from_the_pts_and_ranges_select_frames(tmp_path, capsys):
    pts_ms = [0, 40, 70, 130, 150, 230, 260, 300]
    video = write_video(tmp_path / "vfr.mp4", [scene(k) for k in range(len(pts_ms))], pts_ms=pts_ms)
    frames, _ = decode(video)
    times = 1000.0 * np.array(pts_ms)
    out = tmp_path / "vfr.h5"
    code, err = run(capsys, "--video", video, "--out", out, "--seed", SEED)
    assert code == 0, err
    assert_same_events(read_back(out), reference_events(frames, times))

    # --start 0.06 --duration 0.2: frames at 70..230 ms; --max-frames 3 keeps 70, 130, 150 ms.
    code, err = run(capsys, "--video", video, "--out", out, "--seed", SEED, "--start", 0.06, "--duration", 0.2,
                    "--max-frames", 3, "--overwrite")
    assert code == 0, err
    assert "3 frames (2 frame pairs simulated)" in err
    assert_same_events(read_back(out), reference_events(frames[2:5], times[2:5]))


def test_frames_folder_in_natural_order_with_fps_timestamps_and_resize(tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(12):  # frame_1 ... frame_12: natural order, not frame_1, frame_10, frame_11, frame_12, frame_2
        Image.fromarray(scene(k)).save(folder / f"frame_{k + 1}.png")
    (folder / "notes.txt").write_text("not an image")
    frames = np.stack([np.asarray(Image.fromarray(scene(k)).convert("L"), np.float32) / 255 for k in range(12)])

    out = tmp_path / "fps.h5"
    code, err = run(capsys, "--frames", folder, "--fps", 50, "--out", out, "--seed", SEED)
    assert code == 0, err
    assert_same_events(read_back(out), reference_events(frames, 20000.0 * np.arange(12)))

    # Times in seconds from a file, frames resized to 32x24 with Pillow's bilinear filter.
    seconds = 0.5 + 0.01 * np.arange(12) ** 1.5
    (tmp_path / "times.txt").write_text("# seconds\n" + "\n".join(f"{value:.6f}" for value in seconds) + "\n")
    small = np.stack([np.asarray(Image.fromarray(scene(k)).convert("L").resize((32, 24), Image.BILINEAR),
                                 np.float32) / 255 for k in range(12)])
    out = tmp_path / "small.txt"
    code, err = run(capsys, "--frames", folder, "--timestamps", tmp_path / "times.txt", "--width", 32, "--height", 24,
                    "--out", out, "--seed", SEED)
    assert code == 0, err
    expected = reference_events(small, np.round(seconds, 6) * 1e6)
    assert expected.sensor_size == (32, 24) and len(expected) > 100
    assert_same_events(read_back(out), expected)


def _bad_inputs(tmp_path):
    """(arguments, expected message) pairs of input the command must refuse."""
    empty = tmp_path / "empty"
    empty.mkdir()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(scene(0)).save(mixed / "a.png")
    Image.fromarray(scene(1)[:40]).save(mixed / "b.png")
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(scene(0)).save(broken / "a.png")
    (broken / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    ordered = tmp_path / "ordered"
    ordered.mkdir()
    for k in range(3):
        Image.fromarray(scene(k)).save(ordered / f"{k}.png")
    (tmp_path / "same.txt").write_text("0.0\n0.1\n0.1\n")
    (tmp_path / "short.txt").write_text("0.0\n0.1\n")
    (tmp_path / "garbage.mp4").write_bytes(b"this is not a video" * 10)
    (tmp_path / "exists.h5").write_bytes(b"keep me")
    out = tmp_path / "out.h5"
    return [
        (["--frames", empty, "--out", out], "no image files"),
        (["--frames", tmp_path / "missing", "--out", out], "no such folder"),
        (["--frames", mixed, "--out", out], "all frames must have one size"),
        (["--frames", broken, "--out", out], "b.png: cannot read the image"),
        (["--frames", ordered, "--timestamps", tmp_path / "same.txt", "--out", out], "timestamps must increase"),
        (["--frames", ordered, "--timestamps", tmp_path / "short.txt", "--out", out], "2 times for 3 images"),
        (["--frames", ordered, "--start", 5, "--out", out], "no frames in the --start/--duration range"),
        (["--video", tmp_path / "garbage.mp4", "--out", out], "cannot open the video"),
        (["--video", tmp_path / "missing.mp4", "--out", out], "no such video file"),
        (["--frames", ordered, "--out", tmp_path / "exists.h5"], "exists; pass --overwrite"),
        (["--frames", ordered, "--out", tmp_path / "out.csv"], "unsupported extension '.csv'"),
        (["--frames", ordered, "--out", out, "--contrast-threshold-pos", 0.001], "contrast_threshold_pos"),
    ]


def test_bad_input_gives_a_clear_error_and_no_output(tmp_path, capsys):
    for argv, message in _bad_inputs(tmp_path):
        code, err = run(capsys, *argv)
        assert code == 2, (argv, err)
        assert err.startswith("simulate: error: ") and message in err and "Traceback" not in err, (argv, err)
        assert not (tmp_path / "out.h5").exists()
    assert (tmp_path / "exists.h5").read_bytes() == b"keep me"
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no temporary files left


@pytest.mark.parametrize("argv, message", [
    (["--frames", "d", "--video", "v.mp4", "--out", "o.h5"], "not allowed with argument"),
    (["--video", "v.mp4", "--timestamps", "t.txt", "--out", "o.h5"], "--timestamps applies to --frames only"),
    (["--frames", "d", "--interpolate", "0", "--out", "o.h5"], "must be > 0"),
])
def test_bad_flags_exit_with_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        simulate.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "simulate: error:" in err and message in err
