"""Multi-host: two CPU processes joined through a loopback coordinator train the :smoke ReId baseline together."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from anon_jax.training import multihost

# Runs the ReId baseline's main-job path in one process of the job; records what this process's report module
# wrote and the parameters it holds after training.
DRIVER = textwrap.dedent("""
    import json, os, sys
    import jax, numpy as np
    from anon_jax.training import multihost
    multihost.initialize("auto", coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    import configs.eventreid_baseline as experiment
    from anon_jax.methods import reid_baseline
    from anon_jax.training import report

    out_dir, me = sys.argv[4], jax.process_index()
    written = []
    real_write_text, real_target = report.atomic_write_text, report.atomic_target
    report.atomic_write_text = lambda path, text: (written.append(path), real_write_text(path, text))[1]
    report.atomic_target = lambda path: (written.append(path), real_target(path))[1]
    real_fit = reid_baseline.fit

    def recording_fit(*args, **kwargs):
        (model, variables), info = real_fit(*args, **kwargs)
        flat = jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]
        np.savez(f"{out_dir}/params_{me}.npz", **{jax.tree_util.keystr(path): leaf for path, leaf in flat})
        return (model, variables), info

    reid_baseline.fit = recording_fit
    config = experiment.get_config("smoke")
    config.train.num_epochs = 2
    report_dict = reid_baseline.train_and_evaluate(config, sys.argv[3])
    with open(f"{out_dir}/process_{me}.json", "w") as f:
        json.dump({"process_count": jax.process_count(), "devices": jax.device_count(), "written": written,
                   "rank1": report_dict["metrics"]["embed / standard AP"]["rank1"], "pid": os.getpid()}, f)
""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_train_identically_and_only_process_zero_writes(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workdir, out_dir = tmp_path / "workdir", tmp_path / "out"
    out_dir.mkdir()
    address = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    logs = [open(tmp_path / f"log_{i}.txt", "w") for i in range(2)]
    processes = [subprocess.Popen([sys.executable, "-c", DRIVER, address, str(i), str(workdir), str(out_dir)],
                                  cwd=repo, env=env, stdout=logs[i], stderr=subprocess.STDOUT) for i in range(2)]
    try:
        codes = [p.wait(timeout=900) for p in processes]
    finally:
        for p in processes:
            p.kill()
        for log in logs:
            log.close()
    texts = [(tmp_path / f"log_{i}.txt").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(text[-4000:] for text in texts)

    results = [json.loads((out_dir / f"process_{i}.json").read_text()) for i in range(2)]
    assert [r["process_count"] for r in results] == [2, 2]
    assert [r["devices"] for r in results] == [2, 2]
    assert results[0]["rank1"] == results[1]["rank1"]
    # Both processes hold bit-identical parameters and BatchNorm statistics after training.
    params = [np.load(out_dir / f"params_{i}.npz") for i in range(2)]
    assert sorted(params[0].files) == sorted(params[1].files) and len(params[0].files) > 10
    for name in params[0].files:
        np.testing.assert_array_equal(params[0][name], params[1][name], err_msg=name)
    # Only process 0 wrote the report, its figures and the TensorBoard summaries.
    assert {os.path.basename(p) for p in results[0]["written"]} >= {"report.json", "report.md", "metrics.json",
                                                                     "cmc.png"}
    assert results[1]["written"] == []
    assert (workdir / "report.json").is_file() and (workdir / "train" / "stage_done.json").is_file()
    events = [name for _, _, files in os.walk(workdir / "tensorboard") for name in files if "tfevents" in name]
    assert events and not [name for name in events if f".{results[1]['pid']}." in name], events
    # The collective Orbax checkpoint holds the last step once.
    steps = [p.name for p in (workdir / "train" / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps, "no checkpoint was written"


@pytest.mark.parametrize("mode, coordinator, processes, environ, expected", [
    ("auto", None, None, {}, False),
    ("auto", "10.0.0.1:1234", None, {}, True),
    ("auto", None, 2, {}, True),
    ("auto", None, None, {"JAX_COORDINATOR_ADDRESS": "h:1"}, True),
    ("auto", None, None, {"SLURM_NTASKS": "4"}, True),
    ("auto", None, None, {"SLURM_NTASKS": "1"}, False),
    ("on", None, None, {}, True),
    ("off", "10.0.0.1:1234", 2, {"SLURM_NTASKS": "4"}, False),
])
def test_should_initialize(mode, coordinator, processes, environ, expected):
    assert multihost.should_initialize(mode, coordinator_address=coordinator, num_processes=processes,
                                       environ=environ) is expected


def test_should_initialize_rejects_unknown_mode():
    with pytest.raises(ValueError, match="--distributed='sometimes'"):
        multihost.should_initialize("sometimes", coordinator_address=None, num_processes=None)
