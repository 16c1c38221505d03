"""Helpers for tests that run `python -m anon_jax.main` in a subprocess."""

import pathlib
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def main_command(config: str, workdir, *overrides) -> list[str]:
    return [sys.executable, "-m", "anon_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]


def run_main(config: str, workdir, *overrides, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Runs the main job to the end and checks that it succeeded."""
    result = subprocess.run(main_command(config, workdir, *overrides), cwd=REPO, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-6000:]
    return result


def preempt_after_first_checkpoint(config: str, workdir, checkpoint_dir, log_path, *overrides,
                                   timeout: int = 1200) -> str:
    """Starts the main job, sends SIGTERM once `checkpoint_dir` holds a step, checks the exit; returns the log."""
    with open(log_path, "w") as log:  # a file, not a pipe: a full pipe would block the child's logging
        process = subprocess.Popen(main_command(config, workdir, *overrides), cwd=REPO, stdout=log,
                                   stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + timeout
        while not (checkpoint_dir.is_dir() and any(p.name.isdigit() for p in checkpoint_dir.iterdir())):
            assert process.poll() is None, pathlib.Path(log_path).read_text()[-6000:]
            assert time.time() < deadline, f"no checkpoint appeared in {checkpoint_dir}"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=600)
    text = pathlib.Path(log_path).read_text()
    assert process.returncode == 143, text[-6000:]
    assert "rerun the same command to resume" in text
    return text
