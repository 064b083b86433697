#!/usr/bin/env bash
# Runs a zppo-jax config on every worker of a Cloud TPU VM slice, restarted as a whole.
#
#   launch/tpu_run.sh --project P --zone Z --accelerator-type v5p-64 --name my-slice \
#       --config configs/qwen3_5_2b_zppo.py --workdir gs://bucket/runs/2b -- --config.seed=1
#
# Steps (each printed, and only printed with --dry-run):
#   1. optionally create the slice (--create),
#   2. copy this checkout to every worker,
#   3. install the package with jax[tpu] into a Python 3.11 venv on every worker, made by uv (the
#      images' python3 is older: 3.10 on tpu-ubuntu2204-base),
#   4. start `zppo train` on every worker with the same flags, one log per worker, and wait for all.
# This script is the one restart loop of the job: when any worker's trainer fails or is
# preempted, every worker's trainer is stopped and the job starts again on all of them (a
# multi-process JAX job does not survive losing a process); the trainers resume from the
# workdir's latest checkpoint. Keep the script running (tmux, nohup) for the length of the run.
# JAX's multi-controller runtime is initialised by the trainer from the TPU environment
# (ZPPO_DISTRIBUTED=1 makes it call jax.distributed.initialize(); PYTHONHASHSEED=0 keeps any
# set iteration order the same on every host).
set -euo pipefail

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  cat <<'USAGE'
Flags:
  --project P            GCP project (required)
  --zone Z               zone (required)
  --accelerator-type T   e.g. v5p-64, v6e-64, v5litepod-16 (required)
  --name N               TPU VM slice name (required)
  --config C             config file (default configs/demo.py)
  --workdir W            run directory every worker shares: gs://... (required for a multi-host
                         slice), or a path with --shared-workdir (default runs/<config name>
                         on a single-host slice)
  --shared-workdir       W is a path every worker mounts (NFS, Filestore, gcsfuse)
  --version V            TPU software version for --create (default: Google's for the chip,
                         v2-alpha-tpuv6e, v2-alpha-tpuv5, v2-alpha-tpuv5-lite, else
                         tpu-ubuntu2204-base; the install does not use the image's python3)
  --create               create the slice first
  --max-restarts K       restarts of the whole job after a failure or preemption (default 100)
  --restart-delay S      seconds between a failure and the restart (default 30)
  --dry-run              print every command without running it
  -- ARGS                further flags for `zppo train` (e.g. --config.seed=1)
USAGE
}

project="" zone="" accel="" name="" config="configs/demo.py" workdir="" version=""
create=0 dry_run=0 max_restarts=100 shared=0 restart_delay=30
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) project="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --accelerator-type) accel="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --shared-workdir) shared=1; shift ;;
    --version) version="$2"; shift 2 ;;
    --create) create=1; shift ;;
    --max-restarts) max_restarts="$2"; shift 2 ;;
    --restart-delay) restart_delay="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "tpu_run.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in project zone accel name; do
  if [[ -z "${!v}" ]]; then echo "tpu_run.sh: --${v/accel/accelerator-type} is required" >&2; exit 2; fi
done
# Slices named with more than 8 cores/chips (v4-16, v5p-16, v5litepod-16, v6e-16, ...) span
# several hosts; each host's trainer reads and writes the same checkpoints, so the workdir must be
# one they all see.
size="${accel##*-}"
if [[ ! "$size" =~ ^[0-9]+$ ]]; then
  echo "tpu_run.sh: cannot read the size of --accelerator-type $accel (expected e.g. v5p-64)" >&2
  exit 2
fi
if (( size > 8 )) && [[ "$workdir" != gs://* && $shared -eq 0 ]]; then
  echo "tpu_run.sh: $accel has several hosts, which must share the workdir: give" \
       "--workdir gs://BUCKET/PATH, or --workdir PATH --shared-workdir for a path every worker" \
       "mounts (got '${workdir:-runs/$(basename "$config" .py), local to each worker}')" >&2
  exit 2
fi
if [[ -z "$workdir" ]]; then workdir="runs/$(basename "$config" .py)"; fi
if [[ -z "$version" ]]; then
  case "$accel" in
    v6e-*) version="v2-alpha-tpuv6e" ;;
    v5p-*) version="v2-alpha-tpuv5" ;;
    v5litepod-*|v5e-*) version="v2-alpha-tpuv5-lite" ;;
    *) version="tpu-ubuntu2204-base" ;;
  esac
fi

run() {
  # Prints the command; runs it unless --dry-run.
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [[ $dry_run -eq 0 ]]; then "$@"; fi
}

ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$name" --project "$project" --zone "$zone" --worker=all \
    --command "$1"
}

repo_dir="zppo-jax"
if [[ $create -eq 1 ]]; then
  run gcloud compute tpus tpu-vm create "$name" --project "$project" --zone "$zone" \
    --accelerator-type "$accel" --version "$version"
fi
# Ship the committed tree (not the local venv or run directories) as one archive.
src="$(cd "$(dirname "$0")/.." && pwd)"
archive="${TMPDIR:-/tmp}/$repo_dir.tar.gz"
run git -C "$src" archive --format=tar.gz -o "$archive" HEAD
run gcloud compute tpus tpu-vm scp "$archive" "$name:$repo_dir.tar.gz" --project "$project" \
  --zone "$zone" --worker=all
# The package needs Python >= 3.11; the image's python3 is 3.10, so uv provides a 3.11 venv.
install="mkdir -p ~/$repo_dir && tar -xzf ~/$repo_dir.tar.gz -C ~/$repo_dir && cd ~/$repo_dir"
install+=" && python3 -m pip install -q --user uv && ~/.local/bin/uv venv -q --python 3.11 .venv"
install+=" && ~/.local/bin/uv pip install -q --python .venv/bin/python -e '.[tpu]'"
ssh_all "$install"

train_args=(--config="$config" --workdir="$workdir" "${extra[@]}")
quoted="$(printf ' %q' "${train_args[@]}")"
# Every worker runs its trainer in the foreground of its ssh session and prints its exit code, or
# "preempted" for a trainer that saved and stopped on SIGTERM (it exits 0 but has steps to go); the
# pid file lets a restart stop a trainer that is still waiting for a dead peer.
log="logs/worker-\$(hostname).log"
trainer="ZPPO_DISTRIBUTED=1 PYTHONHASHSEED=0 zppo train${quoted} > $log 2>&1"
start="cd ~/$repo_dir && . .venv/bin/activate && mkdir -p logs"
start+=" && { $trainer & echo \$! > logs/train.pid; wait \$!; rc=\$?;"
start+=" if [ \$rc -eq 0 ] && grep -q 'SIGTERM received' $log; then rc=preempted; fi;"
start+=" echo zppo-exit=\$rc; }"
stop="cd ~/$repo_dir && if [ -f logs/train.pid ]; then kill -9 \$(cat logs/train.pid) 2>/dev/null;"
stop+=" rm -f logs/train.pid; fi; true"

for ((attempt = 0; ; attempt++)); do
  if [[ $dry_run -eq 1 ]]; then
    ssh_all "$start"
    break
  fi
  echo "tpu_run.sh: starting the job on every worker (attempt $((attempt + 1)))" >&2
  out="$(ssh_all "$start" | tee /dev/stderr)" || true
  codes="$(grep -oE 'zppo-exit=[0-9a-z]+' <<<"$out" || true)"
  if [[ -n "$codes" ]] && ! grep -qv '^zppo-exit=0$' <<<"$codes"; then
    echo "tpu_run.sh: every worker finished" >&2
    exit 0
  fi
  echo "tpu_run.sh: a worker failed or was preempted (${codes//$'\n'/ }); stopping every" \
       "worker's trainer" >&2
  ssh_all "$stop" || true
  if (( attempt + 1 >= max_restarts )); then
    echo "tpu_run.sh: gave up after $max_restarts restarts" >&2
    exit 1
  fi
  sleep "$restart_delay"
done
