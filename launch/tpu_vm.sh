#!/bin/bash
# anon_jax on a Cloud TPU VM (one host or a multi-host pod slice): create the TPU, install the working tree on every
# worker, run the main job on all workers, resume it after a preemption, watch it, delete the TPU.
# Commands and the environment they assume: launch/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_vm.sh COMMAND [-- anon_jax.main flags]

commands:
  create    create the TPU VM (a queued resource with QUEUED=1; spot capacity with SPOT=1)
  install   mount GCS_BUCKET (if set), copy the working tree (or clone REPO_URL) and pip install on every worker
  run       start python -m anon_jax.main on all workers in the background (log: ~/REMOTE_DIR/run.log)
  resume    recreate and reinstall the TPU if it was preempted or deleted, then run unless the job still runs
  status    TPU state, and per worker whether the job runs plus its last log line
  logs      print the log of WORKER (FOLLOW=1: keep following it)
  stop      send SIGTERM to the job on all workers: it saves a checkpoint and exits (resume continues it)
  delete    delete the TPU VM (the bucket and its workdirs stay)

settings (environment variables, defaults in brackets):
  TPU_NAME [anon-jax]  ZONE [us-central2-b]  ACCELERATOR_TYPE [v4-32]  RUNTIME_VERSION [tpu-ubuntu2204-base]
  PROJECT [gcloud's default]  SPOT [0]  QUEUED [0]  POLL_SECONDS [60]
  CONFIG [configs/eventreid.py]  WORKDIR (run/resume; an absolute path every worker shares)
  EXTRA_FLAGS: more anon_jax.main flags, inserted into the remote command line as written
  GCS_BUCKET: bucket that install mounts on every worker at MOUNT_POINT [/mnt/gcs] with gcsfuse
  GCSFUSE_FLAGS [--implicit-dirs --rename-dir-limit=200000 --metadata-cache-ttl-secs=0]
  REPO_URL, REPO_REF [main]: clone this repository on the workers instead of copying the local working tree
  REMOTE_DIR [anon_jax]: checkout on each worker, relative to its home; the venv is REMOTE_DIR/.venv
  PYTHON_VERSION [3.11]  JAX_PACKAGE [jax[tpu]]
  WORKER [0] (logs: a worker number or all)  LOG_LINES [100]  FOLLOW [0]
  SSH_FLAGS: extra flags for gcloud ssh and scp, e.g. --internal-ip or --tunnel-through-iap
EOF
}

die() {
  echo "tpu_vm.sh: error: $*" >&2
  exit 2
}

say() {
  echo "tpu_vm.sh: $*" >&2
}

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  die "bash >= 4.4 is needed (this is $BASH_VERSION; on macOS: brew install bash, then run it with that bash)."
fi

command_name="${1:-help}"
shift || true
case "$command_name" in
  help | -h | --help)
    usage
    exit 0
    ;;
  run | resume)
    if [[ "${1:-}" == -- ]]; then shift; fi
    ;;
  create | install | status | logs | stop | delete)
    (($# == 0)) || die "'$command_name' takes no arguments (got: $*); settings come from environment variables."
    ;;
  *)
    usage >&2
    die "unknown command '$command_name'."
    ;;
esac

TPU_NAME="${TPU_NAME:-anon-jax}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
PROJECT="${PROJECT:-}"
SPOT="${SPOT:-0}"
QUEUED="${QUEUED:-0}"
POLL_SECONDS="${POLL_SECONDS:-60}"
CONFIG="${CONFIG:-configs/eventreid.py}"
WORKDIR="${WORKDIR:-}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"
GCS_BUCKET="${GCS_BUCKET:-}"
MOUNT_POINT="${MOUNT_POINT:-/mnt/gcs}"
GCSFUSE_FLAGS="${GCSFUSE_FLAGS:---implicit-dirs --rename-dir-limit=200000 --metadata-cache-ttl-secs=0}"
REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-main}"
REMOTE_DIR="${REMOTE_DIR:-anon_jax}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
JAX_PACKAGE="${JAX_PACKAGE:-jax[tpu]}"
WORKER="${WORKER:-0}"
LOG_LINES="${LOG_LINES:-100}"
FOLLOW="${FOLLOW:-0}"

for flag in SPOT QUEUED FOLLOW; do
  [[ "${!flag}" == 0 || "${!flag}" == 1 ]] || die "$flag=${!flag}: use 0 or 1."
done
command -v gcloud >/dev/null 2>&1 || die "gcloud is not on PATH: install the Google Cloud SDK" \
  "(https://cloud.google.com/sdk/docs/install), then run 'gcloud auth login' and 'gcloud config set project ID'."

case "${BASH_SOURCE[0]}" in
  */*) script_dir="${BASH_SOURCE[0]%/*}" ;;
  *) script_dir=. ;;
esac
REPO_ROOT="$(cd "$script_dir/.." && pwd)"
location=(--zone="$ZONE")
if [[ -n "$PROJECT" ]]; then location+=(--project="$PROJECT"); fi
read -r -a ssh_flags <<< "${SSH_FLAGS:-}"

# Runs a bash script on the given workers ("all" or a number); gcloud runs them in parallel.
on_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${location[@]}" --worker="$1" "${ssh_flags[@]}" --command="$2"
}

# The named settings as shell assignments for a remote script (quoted for the workers' bash), then strict mode.
remote_settings() {
  local name
  for name in "$@"; do
    printf '%s=%q\n' "$name" "${!name}"
  done
  echo "set -euo pipefail"
}

# State of the TPU ($1 = tpu-vm) or of its queued resource ($1 = queued-resources); MISSING when it does not exist.
resource_state() {
  local output
  if output="$(gcloud compute tpus "$1" describe "$TPU_NAME" "${location[@]}" --format="$2" 2>&1)"; then
    echo "$output"
  elif [[ "$output" == *NOT_FOUND* ]]; then
    echo MISSING
  else
    die "'gcloud compute tpus $1 describe $TPU_NAME' failed: $output"
  fi
}

node_state() {
  resource_state tpu-vm 'value(state)'
}

queued_state() {
  resource_state queued-resources 'value(state.state)'
}

check_workdir() {
  [[ -n "$WORKDIR" ]] || die "WORKDIR is not set: give a folder every worker shares, e.g." \
    "GCS_BUCKET=my-bucket (mounted by 'install' at $MOUNT_POINT) and WORKDIR=$MOUNT_POINT/runs/eventreid."
  [[ "$WORKDIR" == /* ]] || die "WORKDIR=$WORKDIR must be an absolute path on storage every worker shares" \
    "(e.g. $MOUNT_POINT/runs/eventreid); a relative one would be a separate folder on each worker."
}

wait_for_queued_resource() {
  local state
  while true; do
    state="$(queued_state)"
    case "$state" in
      ACTIVE)
        say "queued resource $TPU_NAME is ACTIVE."
        return
        ;;
      ACCEPTED | PROVISIONING | WAITING_FOR_RESOURCES | CREATING)
        say "queued resource $TPU_NAME is $state; checking again in ${POLL_SECONDS}s" \
          "(Ctrl-C is safe: 'launch/tpu_vm.sh resume' picks it up)."
        sleep "$POLL_SECONDS"
        ;;
      *)
        die "queued resource $TPU_NAME is $state: see 'gcloud compute tpus queued-resources describe $TPU_NAME" \
          "--zone=$ZONE'; 'launch/tpu_vm.sh delete' removes it."
        ;;
    esac
  done
}

cmd_create() {
  local capacity=()
  if [[ "$SPOT" == 1 ]]; then capacity=(--spot); fi
  if [[ "$QUEUED" == 1 ]]; then
    gcloud compute tpus queued-resources create "$TPU_NAME" "${location[@]}" --node-id="$TPU_NAME" \
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" "${capacity[@]}"
    wait_for_queued_resource
  else
    gcloud compute tpus tpu-vm create "$TPU_NAME" "${location[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
      --version="$RUNTIME_VERSION" "${capacity[@]}"
  fi
}

# Tracked files deleted from the working tree are dropped (tar would fail on them).
existing_paths() {
  local path
  while IFS= read -r -d '' path; do
    if [[ -e "$REPO_ROOT/$path" ]]; then printf '%s\0' "$path"; fi
  done
}

# Copies tracked and untracked-but-not-ignored files (no venvs, workdirs or caches) to ~/anon_jax_source.tar.gz.
copy_working_tree() {
  git -C "$REPO_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1 || die "$REPO_ROOT is not a git checkout," \
    "so its source files cannot be listed: set REPO_URL (and REPO_REF) to clone on the workers instead."
  archive="$(mktemp "${TMPDIR:-/tmp}/anon_jax_source.XXXXXX")"
  trap 'rm -f "$archive"' EXIT
  git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard | existing_paths |
    tar -czf "$archive" -C "$REPO_ROOT" --null -T -
  gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:anon_jax_source.tar.gz" "${location[@]}" --worker=all \
    "${ssh_flags[@]}"
}

install_script() {
  cat <<'EOF'
if [[ -n "$GCS_BUCKET" ]]; then
  if ! command -v gcsfuse >/dev/null; then
    keyring=/usr/share/keyrings/cloud.google.asc
    echo "deb [signed-by=$keyring] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main" |
      sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee "$keyring" >/dev/null
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcsfuse
  fi
  sudo mkdir -p "$MOUNT_POINT"
  sudo chown "$(id -u):$(id -g)" "$MOUNT_POINT"
  if ! mountpoint -q "$MOUNT_POINT"; then
    read -r -a fuse_flags <<< "$GCSFUSE_FLAGS"
    gcsfuse "${fuse_flags[@]}" "$GCS_BUCKET" "$MOUNT_POINT"
  fi
fi
if [[ -n "$REPO_URL" ]]; then
  if [[ -d "$REMOTE_DIR/.git" ]]; then
    git -C "$REMOTE_DIR" fetch --depth 1 origin "$REPO_REF"
    git -C "$REMOTE_DIR" checkout --force FETCH_HEAD
  else
    git clone --depth 1 --branch "$REPO_REF" "$REPO_URL" "$REMOTE_DIR"
  fi
else
  mkdir -p "$REMOTE_DIR"
  tar -xzf anon_jax_source.tar.gz -C "$REMOTE_DIR"
  rm anon_jax_source.tar.gz
fi
cd "$REMOTE_DIR"
# TPU VM images ship an older system Python than JAX supports; uv provides the requested one.
if [[ ! -x .venv/bin/python ]]; then
  export PATH="$HOME/.local/bin:$PATH"
  if ! command -v uv >/dev/null; then
    curl -LsSf https://astral.sh/uv/install.sh | env UV_INSTALL_DIR="$HOME/.local/bin" INSTALLER_NO_MODIFY_PATH=1 sh
  fi
  uv venv --seed --python "$PYTHON_VERSION" .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e . "$JAX_PACKAGE"
jax_version="$(.venv/bin/python -c 'import jax; print(jax.__version__)')"
echo "$(hostname): installed anon_jax in ~/$REMOTE_DIR with jax $jax_version"
EOF
}

cmd_install() {
  if [[ -z "$REPO_URL" ]]; then copy_working_tree; fi
  on_workers all "$(remote_settings REMOTE_DIR GCS_BUCKET MOUNT_POINT GCSFUSE_FLAGS REPO_URL REPO_REF \
    PYTHON_VERSION JAX_PACKAGE)
$(install_script)"
}

# Prints "<host>: running (pid N)" or "<host>: stopped" per worker, with the last log line.
probe_script() {
  cat <<'EOF'
if ! cd "$REMOTE_DIR" 2>/dev/null; then echo "$(hostname): not installed"; exit 0; fi
if [[ -f run.pid ]] && kill -0 "$(cat run.pid)" 2>/dev/null; then
  echo "$(hostname): running (pid $(cat run.pid))"
else
  echo "$(hostname): stopped"
fi
if [[ -f run.log ]]; then echo "  last log line: $(tail -n 1 run.log)"; fi
EOF
}

run_script() {
  cat <<'EOF'
cd "$REMOTE_DIR" || { echo "$(hostname): ~/$REMOTE_DIR is missing: run 'launch/tpu_vm.sh install' first." >&2; exit 1; }
if [[ -f run.pid ]] && kill -0 "$(cat run.pid)" 2>/dev/null; then
  echo "$(hostname): anon_jax already runs (pid $(cat run.pid)); 'launch/tpu_vm.sh stop' ends it." >&2
  exit 1
fi
echo "=== $(date -u '+%F %T UTC') $MAIN_COMMAND" >> run.log
# A new session, no terminal and output in a file: the job outlives this ssh connection.
setsid nohup bash -c "exec $MAIN_COMMAND" >> run.log 2>&1 < /dev/null &
echo $! > run.pid
echo "$(hostname): started pid $! (log ~/$REMOTE_DIR/run.log)"
EOF
}

cmd_run() {
  check_workdir
  local main_command
  printf -v main_command '%q ' .venv/bin/python -m anon_jax.main "--config=$CONFIG" "--workdir=$WORKDIR" \
    --distributed=on "$@"
  main_command="${main_command% }${EXTRA_FLAGS:+ $EXTRA_FLAGS}"
  on_workers all "$(remote_settings REMOTE_DIR)
MAIN_COMMAND=$(printf '%q' "$main_command")
$(run_script)"
}

cmd_status() {
  local state
  if [[ "$QUEUED" == 1 ]]; then
    state="$(queued_state)"
    echo "queued resource $TPU_NAME: $state"
  fi
  state="$(node_state)"
  echo "TPU $TPU_NAME ($ACCELERATOR_TYPE in $ZONE): $state"
  if [[ "$state" == READY ]]; then on_workers all "$(remote_settings REMOTE_DIR)
$(probe_script)"; fi
}

cmd_logs() {
  local follow=""
  if [[ "$FOLLOW" == 1 ]]; then follow="-F"; fi
  on_workers "$WORKER" "$(remote_settings REMOTE_DIR)
tail -n $(printf '%q' "$LOG_LINES") $follow \"\$REMOTE_DIR/run.log\""
}

cmd_stop() {
  on_workers all "$(remote_settings REMOTE_DIR)
if [[ -f \"\$REMOTE_DIR/run.pid\" ]] && kill -TERM \"\$(cat \"\$REMOTE_DIR/run.pid\")\" 2>/dev/null; then
  echo \"\$(hostname): sent SIGTERM; the job saves a checkpoint and exits\"
else
  echo \"\$(hostname): not running\"
fi"
}

cmd_delete() {
  if [[ "$QUEUED" == 1 ]]; then
    gcloud compute tpus queued-resources delete "$TPU_NAME" "${location[@]}" --force --quiet
  else
    gcloud compute tpus tpu-vm delete "$TPU_NAME" "${location[@]}" --quiet
  fi
}

# Leaves a READY TPU; sets fresh=1 when it had to be created (again), so it needs 'install'.
recreate_if_needed() {
  local state
  fresh=1
  if [[ "$QUEUED" == 1 ]]; then
    state="$(queued_state)"
    case "$state" in
      ACTIVE) ;;
      ACCEPTED | PROVISIONING | WAITING_FOR_RESOURCES | CREATING)
        wait_for_queued_resource
        return
        ;;
      MISSING)
        say "queued resource $TPU_NAME does not exist: creating it."
        cmd_create
        return
        ;;
      *)
        say "queued resource $TPU_NAME is $state: deleting and recreating it."
        cmd_delete
        cmd_create
        return
        ;;
    esac
  fi
  state="$(node_state)"
  case "$state" in
    READY) fresh=0 ;;
    MISSING)
      say "TPU $TPU_NAME does not exist: creating it."
      cmd_create
      ;;
    CREATING | STARTING | RESTARTING | REPAIRING)
      die "TPU $TPU_NAME is $state: run 'launch/tpu_vm.sh resume' again once it is READY."
      ;;
    *)
      say "TPU $TPU_NAME is $state (preempted?): deleting and recreating it."
      cmd_delete
      cmd_create
      ;;
  esac
}

cmd_resume() {
  check_workdir
  recreate_if_needed
  if [[ "$fresh" == 1 ]]; then cmd_install; fi
  local workers
  workers="$(on_workers all "$(remote_settings REMOTE_DIR)
$(probe_script)")"
  if [[ "$workers" == *": running ("* ]]; then
    say "the job still runs; nothing to resume:"
    echo "$workers"
    return
  fi
  say "starting the job; it resumes from the last checkpoint in $WORKDIR and skips finished stages."
  cmd_run "$@"
}

"cmd_$command_name" "$@"
