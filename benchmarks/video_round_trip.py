"""Video -> events -> frames: how closely the reconstruct command recovers a video from the simulate command's events.

    python -m benchmarks.video_round_trip --checkpoint DIR [--quick] [--out DIR] [--work_dir DIR]

A short grayscale video is generated (a slow pan with a little zoom over matplotlib's sample photograph
grace_hopper.jpg, 96x64 pixels, 30 fps, encoded losslessly with PyAV), turned into events by
`python -m anon_jax.simulate --interpolate 4` and back into frames by `python -m anon_jax.reconstruct` with the
reconstructor in --checkpoint (for example `configs/e2vid_pretrain.py`'s WORKDIR/reconstructor). Every reconstructed
frame is compared with the video frame shown at its window's last event (the latest frame at or before that
time): SSIM (torchmetrics' Gaussian window, data range 1) and PSNR, averaged over frames after the first
--skip windows (the recurrent reconstructor starts from nothing). The same comparison against a constant mid-gray
frame is reported as the floor.
"""

from __future__ import annotations

import argparse
import fractions
import pathlib
import shutil
import time

import numpy as np
from matplotlib import cbook
from PIL import Image

from anon_jax import reconstruct, simulate
from anon_jax.metrics import image as image_metrics

NAME = "video_round_trip"
WIDTH, HEIGHT, FPS = 96, 64, 30


def make_video(path: pathlib.Path, num_frames: int) -> np.ndarray:
    """Writes the panning video to `path` (x264 qp 0, or FFV1) and returns its frames (T, H, W) uint8."""
    import av

    with cbook.get_sample_data("grace_hopper.jpg") as file:
        photo = Image.open(file).convert("L")
    photo = photo.resize((240, photo.height * 240 // photo.width), Image.BILINEAR)
    frames = []
    for k in range(num_frames):
        zoom = 1.0 + 0.002 * k
        left, top = 10 + 1.2 * k, 40 + 0.4 * k  # about 1.3 pixels per frame
        box = (left, top, left + WIDTH * zoom, top + HEIGHT * zoom)
        frames.append(np.asarray(photo.resize((WIDTH, HEIGHT), Image.BILINEAR, box=box)))
    codec = "libx264" if "libx264" in av.codecs_available else "ffv1"
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"qp": "0"} if codec == "libx264" else {}
        stream.codec_context.time_base = fractions.Fraction(1, FPS)
        for frame in frames:
            rgb = np.repeat(frame[..., None], 3, axis=-1)  # gray: no chroma loss in yuv420p
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return np.stack(frames)


def compare(frames: np.ndarray, reconstruction_dir: pathlib.Path, skip: int) -> dict:
    """Mean SSIM/PSNR of reconstructed frames against the video frame on screen at each window's end."""
    stamps = np.array([float(line) for line in (reconstruction_dir / "timestamps.txt").read_text().split()])
    pngs = sorted(reconstruction_dir.glob("frame_*.png"))
    shown = np.minimum((stamps * FPS / 1e6).astype(int), len(frames) - 1)  # frame k is on screen from k / fps
    reconstructed = np.stack([np.asarray(Image.open(png), np.float32) / 255 for png in pngs])[skip:]
    truth = frames[shown].astype(np.float32)[skip:] / 255
    gray = np.full_like(truth, 0.5)
    metrics = {}
    for name, candidate in (("reconstruct", reconstructed), ("mid-gray", gray)):
        ssim = image_metrics.ssim(candidate[..., None], truth[..., None], data_range=1.0)
        psnr = image_metrics.psnr(candidate[..., None], truth[..., None])
        metrics[name] = {"ssim": float(np.mean(ssim)), "psnr": float(np.mean(psnr))}
    return {"windows": len(pngs), "compared": len(truth), **metrics}


def main(argv=None) -> None:
    from benchmarks import common

    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--checkpoint", required=True, help="reconstructor folder (e2vid.save_pretrained)")
    parser.add_argument("--work_dir", default="benchmarks/data/video_round_trip",
                        help="video, events and frames of the run")
    parser.add_argument("--skip", type=int, default=5, help="first windows left out of the averages")
    args = parser.parse_args(argv)
    num_frames = 12 if args.quick else 90
    work = pathlib.Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    frames = make_video(work / "video.mkv", num_frames)
    started = time.perf_counter()
    assert simulate.main(["--video", str(work / "video.mkv"), "--out", str(work / "events.h5"),
                          "--interpolate", "4", "--seed", "0"]) == 0
    simulated = time.perf_counter()
    assert reconstruct.main(["--events", str(work / "events.h5"), "--checkpoint", args.checkpoint,
                             "--out", str(work / "frames"), "--auto_hdr"]) == 0
    finished = time.perf_counter()
    result = compare(frames, work / "frames", min(args.skip, num_frames // 4))
    row = {"video": f"{num_frames} frames {WIDTH}x{HEIGHT} @ {FPS} fps", "windows": result["windows"],
           "compared": result["compared"], "ssim": result["reconstruct"]["ssim"],
           "psnr": result["reconstruct"]["psnr"], "ssim_mid_gray": result["mid-gray"]["ssim"],
           "psnr_mid_gray": result["mid-gray"]["psnr"], "simulate_s": simulated - started,
           "reconstruct_s": finished - simulated}
    common.write_results(NAME, [row], {"checkpoint": args.checkpoint, "skip": args.skip}, args.out)


if __name__ == "__main__":
    main()
