#!/usr/bin/env bash
# Runs a zppo-jax config on NVIDIA GPUs with jax[cuda]: one node, or several nodes under SLURM.
#
#   launch/gpu_run.sh --config configs/qwen3_5_2b_zppo.py --workdir runs/2b           # one node
#   launch/gpu_run.sh --nodes 8 --gpus-per-node 8 --partition gpu --config ... \
#       --workdir /shared/runs/2b --shared-workdir                                   # SLURM
#
# One node: a single process drives every local GPU. SLURM: one task per GPU on every node; each
# calls jax.distributed.initialize() (ZPPO_DISTRIBUTED=1), which reads the SLURM environment, and
# takes the GPU of its local rank (zppo_jax.distributed.local_device_ids). The job step (`srun
# --kill-on-bad-exit=1`) runs the trainers directly, so one failed task ends the step on every
# node; the batch script then starts the step again as a whole, and the trainers resume from the
# workdir's latest checkpoint.
set -euo pipefail

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  cat <<'USAGE'
Flags:
  --config C             config file (default configs/demo.py)
  --workdir W            run directory (default runs/<config name>); with --nodes > 1 it must be
                         gs://... or a path every node mounts, stated with --shared-workdir
  --shared-workdir       W is on a filesystem every node mounts
  --nodes N              SLURM nodes (default 1: run here, without SLURM)
  --gpus-per-node G      GPUs per node, one task each (default 8)
  --partition P          SLURM partition
  --time T               SLURM time limit (default 72:00:00)
  --install              pip install the package with jax[cuda12] first
  --max-restarts K       restarts of the whole run after a failure (default 100)
  --dry-run              print every command without running it
  -- ARGS                further flags for `zppo train` (e.g. --config.seed=1)
USAGE
}

config="configs/demo.py" workdir="" nodes=1 gpus=8 partition="" time_limit="72:00:00"
install=0 dry_run=0 max_restarts=100 shared=0
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --shared-workdir) shared=1; shift ;;
    --nodes) nodes="$2"; shift 2 ;;
    --gpus-per-node) gpus="$2"; shift 2 ;;
    --partition) partition="$2"; shift 2 ;;
    --time) time_limit="$2"; shift 2 ;;
    --install) install=1; shift ;;
    --max-restarts) max_restarts="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "gpu_run.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
  esac
done
if (( nodes > 1 )) && [[ "$workdir" != gs://* && $shared -eq 0 ]]; then
  echo "gpu_run.sh: $nodes nodes must share the workdir: give --workdir gs://BUCKET/PATH, or" \
       "--workdir PATH --shared-workdir for a path every node mounts" \
       "(got '${workdir:-runs/$(basename "$config" .py)}')" >&2
  exit 2
fi
if [[ -z "$workdir" ]]; then workdir="runs/$(basename "$config" .py)"; fi

run() {
  # Prints the command; runs it unless --dry-run.
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [[ $dry_run -eq 0 ]]; then "$@"; fi
}

if [[ $install -eq 1 ]]; then
  run pip install -q -e "$(cd "$(dirname "$0")/.." && pwd)[cuda]"
fi
train=(zppo train --config="$config" --workdir="$workdir" "${extra[@]}")
quoted="$(printf ' %q' "${train[@]}")"

if [[ $nodes -eq 1 ]]; then
  loop="n=0; until${quoted}; do n=\$((n+1)); [ \$n -ge $max_restarts ] && exit 1; sleep 30; done"
  run bash -c "$loop"
else
  # Every task sees all GPUs of its node and takes the one of its local rank; the restart loop
  # is outside the job step, so --kill-on-bad-exit ends every task when one fails.
  step="srun --kill-on-bad-exit=1 --ntasks-per-node=$gpus"
  step+=" env ZPPO_DISTRIBUTED=1 PYTHONHASHSEED=0${quoted}"
  loop="n=0; until $step; do n=\$((n+1)); [ \$n -ge $max_restarts ] && exit 1; sleep 30; done"
  # --requeue: a preempted job (the trainers save on SIGTERM and exit) is queued again and resumes.
  sbatch_args=(--nodes="$nodes" --ntasks-per-node="$gpus" --gpus-per-node="$gpus"
               --time="$time_limit" --job-name="zppo-$(basename "$config" .py)"
               --output="logs/%x-%j.log" --requeue)
  if [[ -n "$partition" ]]; then sbatch_args+=(--partition="$partition"); fi
  run mkdir -p logs
  run sbatch "${sbatch_args[@]}" --wrap "$loop"
fi
