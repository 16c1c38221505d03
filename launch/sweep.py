"""Sweep helper: expands the list of overrides a config file's `get_sweep(arg)` returns into one anon_jax run each,
validated against the config, and prints, runs or submits (SLURM) them.

  python launch/sweep.py --config=configs/eventreid.py[:variant] --workdir=ROOT [--launcher=print|local|slurm] \
      [-- extra flags for anon_jax.main]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import ml_collections

from anon_jax.files import atomic_write_text

SLURM_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slurm.sbatch")
MAX_NAME_LENGTH = 120  # run folder names stay well under the 255-byte file name limit
# Field types ml_collections' config_flags can parse from one command-line string.
COMMAND_LINE_TYPES = (bool, int, float, str, tuple)


class SweepError(ValueError):
    """A sweep that cannot be expanded: missing config file or get_sweep, unknown field, value of the wrong type."""


def load_config_module(config_arg: str):
    """Loads FILE of `FILE[:arg]` as config_flags does; returns (module, file path, arg or None)."""
    path, separator, arg = config_arg.partition(":")
    if not os.path.isfile(path):
        raise SweepError(f"--config={config_arg}: config file {path!r} does not exist (paths are relative to "
                         f"{os.getcwd()}).")
    spec = importlib.util.spec_from_file_location("anon_jax_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path, arg if separator else None


def load_sweep(config_arg: str) -> tuple[ml_collections.ConfigDict, list[dict], str]:
    """get_config(arg) and get_sweep(arg) of the config file, with the sweep's shape checked."""
    module, path, arg = load_config_module(config_arg)
    variant_args = () if arg is None else (arg,)  # config_flags passes the text after ':' only when present
    if not callable(getattr(module, "get_sweep", None)):
        raise SweepError(f"{path} defines no get_sweep(arg=None); add one returning a list of dicts that map dotted "
                         "config fields to values, e.g. [{'joint.loss.rec_weight': 0.5}].")
    config = module.get_config(*variant_args)
    sweep = module.get_sweep(*variant_args)
    if not isinstance(sweep, (list, tuple)) or not sweep:
        raise SweepError(f"{path}: get_sweep returned {sweep!r}; it must return a non-empty list of dicts.")
    for index, overrides in enumerate(sweep):
        if not isinstance(overrides, dict) or not all(isinstance(key, str) for key in overrides):
            raise SweepError(f"{path}: get_sweep entry {index} is {overrides!r}; each entry must be a dict mapping "
                             "dotted config fields (str) to values.")
    return config, list(sweep), path


def override_text(config: ml_collections.ConfigDict, key: str, value, where: str) -> str:
    """The command-line text of `--config.<key>=...`, after checking that the field exists and the value fits it."""
    holder, walked = config, []
    parts = key.split(".")
    for part in parts[:-1]:
        if part not in holder or not isinstance(holder[part], ml_collections.ConfigDict):
            raise SweepError(f"{where}: {key!r} is not a field of the config: "
                             f"{'.'.join(['config', *walked])} has no section {part!r} "
                             f"(it has {sorted(holder.keys())}).")
        holder = holder[part]
        walked.append(part)
    field = parts[-1]
    if field not in holder:
        raise SweepError(f"{where}: {key!r} is not a field of the config: {'.'.join(['config', *walked])} has no "
                         f"field {field!r} (it has {sorted(holder.keys())}).")
    field_type = holder.get_type(field)
    if field_type not in COMMAND_LINE_TYPES:
        raise SweepError(f"{where}: config.{key} is of type {field_type.__name__}, which cannot be set from the "
                         "command line; sweep over the bool, int, float, str or tuple fields inside it.")
    # bool is an int subclass, but a bool for a number field (or 1 for a bool) is a mistake worth reporting.
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if field_type is bool and isinstance(value, bool):
        return "true" if value else "false"
    if field_type is int and is_number and isinstance(value, int):
        return str(value)
    if field_type is float and is_number:
        return repr(float(value))
    if field_type is str and isinstance(value, str):
        return value
    if field_type is tuple and isinstance(value, (tuple, list)):
        return repr(tuple(value))
    raise SweepError(f"{where}: config.{key} is of type {field_type.__name__} (now {holder[field]!r}) but the "
                     f"sweep sets {value!r} ({type(value).__name__}).")


def run_name(flag_texts: dict[str, str], labels: dict[str, str]) -> str:
    """A readable, filesystem-safe folder name such as `rec_weight=0.5` (`defaults` for no overrides)."""
    parts = []
    for key, text in flag_texts.items():
        safe_value = re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "empty"
        parts.append(f"{labels[key]}={safe_value}")
    name = ",".join(parts) or "defaults"
    if len(name) > MAX_NAME_LENGTH:  # keep it unique with a digest of the whole name
        name = f"{name[:MAX_NAME_LENGTH - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def expand(config_arg: str, root: str, main_flags: list[str]) -> list[dict]:
    """One run per sweep entry: name, workdir ROOT/<name>, overrides, their flags and the anon_jax.main command."""
    config, sweep, path = load_sweep(config_arg)
    keys = {key for overrides in sweep for key in overrides}
    last_parts = [key.rsplit(".", 1)[-1] for key in keys]
    # The last part of a field path names the run unless two swept fields share it (e.g. two `num_epochs`).
    labels = {key: key if last_parts.count(key.rsplit(".", 1)[-1]) > 1 else key.rsplit(".", 1)[-1] for key in keys}
    runs, names = [], {}
    for index, overrides in enumerate(sweep):
        texts = {key: override_text(config, key, value, f"{path}: get_sweep entry {index}")
                 for key, value in overrides.items()}
        name = run_name(texts, labels)
        if name in names:
            raise SweepError(f"{path}: get_sweep entries {names[name]} and {index} both give the run name {name!r}; "
                             "make the entries differ.")
        names[name] = index
        workdir = os.path.join(root, name)
        override_flags = [f"--config.{key}={text}" for key, text in texts.items()]
        command = ["python", "-m", "anon_jax.main", f"--config={config_arg}", f"--workdir={workdir}",
                   *override_flags, *main_flags]
        runs.append({"name": name, "workdir": workdir, "overrides": overrides, "override_flags": override_flags,
                     "command": command})
    return runs


def launch_local(runs: list[dict], keep_going: bool) -> int:
    """Runs the commands one after another with this interpreter; returns the number of failed runs."""
    failed = []
    for number, run in enumerate(runs, 1):
        print(f"[sweep] run {number}/{len(runs)}: {run['name']}", file=sys.stderr, flush=True)
        code = subprocess.run([sys.executable, *run["command"][1:]], check=False).returncode
        if code == 0:
            continue
        failed.append(run["name"])
        message = (f"[sweep] run {run['name']} failed with exit code {code}: {shlex.join(run['command'])}\n"
                   "[sweep] rerunning the same sweep resumes it (finished stages are skipped)")
        # 143: the run was stopped by SIGTERM and saved a checkpoint; the machine is going away, so stop too.
        if not keep_going or code == 143:
            raise SystemExit(message + ("" if code == 143 else "; pass --keep_going to run the others anyway."))
        print(message, file=sys.stderr, flush=True)
    if failed:
        print(f"[sweep] {len(failed)} of {len(runs)} runs failed: {', '.join(failed)}", file=sys.stderr)
    return len(failed)


def launch_slurm(runs: list[dict], config_arg: str, main_flags: list[str], sbatch_args: list[str]) -> None:
    """Submits each run with `sbatch launch/slurm.sbatch`: CONFIG and WORKDIR in the environment, flags as arguments."""
    if shutil.which("sbatch") is None:
        raise SweepError("sbatch is not on PATH: run --launcher=slurm on a SLURM login node.")
    for run in runs:
        environment = dict(os.environ, CONFIG=config_arg, WORKDIR=run["workdir"])
        command = ["sbatch", f"--job-name=anon_jax-{run['name']}", *sbatch_args, SLURM_SCRIPT, *run["override_flags"],
                   *main_flags]
        result = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"[sweep] sbatch failed for run {run['name']} (exit {result.returncode}): "
                             f"{result.stderr.strip()}\n[sweep] command: {shlex.join(command)}")
        print(f"[sweep] {run['name']}: {result.stdout.strip()}", flush=True)


def parse_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Sweep options before `--`, flags for anon_jax.main after it."""
    own, main_flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file with get_sweep, e.g. configs/eventreid.py:paper")
    parser.add_argument("--workdir", required=True, help="sweep root: one subfolder per run, plus sweep.json")
    parser.add_argument("--launcher", choices=("print", "local", "slurm"), default="print",
                        help="print the commands (default), run them here one by one, or sbatch each")
    parser.add_argument("--keep_going", action="store_true", help="local: run the rest after a failed run")
    parser.add_argument("--sbatch_args", default="", help="slurm: extra sbatch options, e.g. '--nodes=4 -p gpu'")
    return parser.parse_args(own), main_flags


def main(argv: list[str]) -> int:
    args, main_flags = parse_arguments(argv)
    runs = expand(args.config, args.workdir, main_flags)
    os.makedirs(args.workdir, exist_ok=True)
    sweep_file = os.path.join(args.workdir, "sweep.json")
    atomic_write_text(sweep_file, json.dumps({"config": args.config, "runs": runs}, indent=2) + "\n")
    print(f"[sweep] {len(runs)} runs written to {sweep_file}", file=sys.stderr, flush=True)
    if args.launcher == "print":
        for run in runs:
            print(shlex.join(run["command"]))
    elif args.launcher == "local":
        return 1 if launch_local(runs, args.keep_going) else 0
    else:
        launch_slurm(runs, args.config, main_flags, shlex.split(args.sbatch_args))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except SweepError as error:
        sys.exit(f"sweep.py: error: {error}")
