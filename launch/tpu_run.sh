#!/usr/bin/env bash
# Runs a zppo-jax config on every worker of a Cloud TPU VM slice.
#
#   launch/tpu_run.sh --project P --zone Z --accelerator-type v5p-64 --name my-slice \
#       --config configs/qwen3_5_2b_zppo.py --workdir gs://bucket/runs/2b -- --config.seed=1
#
# Steps (each printed, and only printed with --dry-run):
#   1. optionally create the slice (--create),
#   2. copy this checkout to every worker,
#   3. install the package with jax[tpu] on every worker,
#   4. start `zppo train` on every worker with the same flags, one log per worker, restarting it
#      after a crash or preemption (the trainer resumes from the workdir's latest checkpoint).
# JAX's multi-controller runtime is initialised by the trainer from the TPU environment
# (ZPPO_DISTRIBUTED=1 makes it call jax.distributed.initialize(); PYTHONHASHSEED=0 keeps any
# set iteration order the same on every host).
set -euo pipefail

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'USAGE'
Flags:
  --project P            GCP project (required)
  --zone Z               zone (required)
  --accelerator-type T   e.g. v5p-64, v6e-64, v5litepod-16 (required)
  --name N               TPU VM slice name (required)
  --config C             config file (default configs/demo.py)
  --workdir W            run directory, local to each worker or gs:// (default runs/<config name>)
  --version V            TPU software version for --create (default tpu-ubuntu2204-base)
  --create               create the slice first
  --max-restarts K       restarts of a crashed run per worker (default 100)
  --dry-run              print every command without running it
  -- ARGS                further flags for `zppo train` (e.g. --config.seed=1)
USAGE
}

project="" zone="" accel="" name="" config="configs/demo.py" workdir="" version="tpu-ubuntu2204-base"
create=0 dry_run=0 max_restarts=100
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) project="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --accelerator-type) accel="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --create) create=1; shift ;;
    --max-restarts) max_restarts="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "tpu_run.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in project zone accel name; do
  if [[ -z "${!v}" ]]; then echo "tpu_run.sh: --${v/accel/accelerator-type} is required" >&2; exit 2; fi
done
if [[ -z "$workdir" ]]; then workdir="runs/$(basename "$config" .py)"; fi

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
ssh_all "mkdir -p ~/$repo_dir && tar -xzf ~/$repo_dir.tar.gz -C ~/$repo_dir && cd ~/$repo_dir && python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[tpu]' 'jax[tpu]==0.10.2'"

train_args=(--config="$config" --workdir="$workdir" "${extra[@]}")
quoted="$(printf ' %q' "${train_args[@]}")"
# Each worker restarts its trainer until it exits 0; the trainer resumes from the latest checkpoint.
loop="n=0; until ZPPO_DISTRIBUTED=1 PYTHONHASHSEED=0 zppo train${quoted}; do n=\$((n+1)); [ \$n -ge $max_restarts ] && exit 1; sleep 30; done"
ssh_all "cd ~/$repo_dir && . .venv/bin/activate && mkdir -p logs && nohup bash -c '$loop' > logs/worker-\$(hostname).log 2>&1 &"
