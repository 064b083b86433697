#!/usr/bin/env bash
# Runs a zppo-jax config on NVIDIA GPUs with jax[cuda]: one node, or several nodes under SLURM.
#
#   launch/gpu_run.sh --config configs/qwen3_5_2b_zppo.py --workdir /shared/runs/2b          # one node
#   launch/gpu_run.sh --nodes 8 --gpus-per-node 8 --partition gpu --config ... --workdir ...   # SLURM
#
# One node: a single process drives every local GPU. SLURM: `sbatch` starts one process per node;
# each calls jax.distributed.initialize() (ZPPO_DISTRIBUTED=1), which reads the SLURM environment.
# The run restarts after a crash or preemption and resumes from the workdir's latest checkpoint.
set -euo pipefail

config="configs/demo.py" workdir="" nodes=1 gpus=8 partition="" time_limit="72:00:00"
install=0 dry_run=0 max_restarts=100
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --gpus-per-node) gpus="$2"; shift 2 ;;
    --partition) partition="$2"; shift 2 ;;
    --time) time_limit="$2"; shift 2 ;;
    --install) install=1; shift ;;
    --max-restarts) max_restarts="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
      echo "Flags: --config --workdir --nodes --gpus-per-node --partition --time --install --max-restarts --dry-run -- ARGS"
      exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "gpu_run.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -z "$workdir" ]]; then workdir="runs/$(basename "$config" .py)"; fi

run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [[ $dry_run -eq 0 ]]; then "$@"; fi
}

if [[ $install -eq 1 ]]; then
  run pip install -q -e "$(cd "$(dirname "$0")/.." && pwd)" "jax[cuda12]==0.10.2"
fi
train=(zppo train --config="$config" --workdir="$workdir" "${extra[@]}")
quoted="$(printf ' %q' "${train[@]}")"
loop="n=0; until${quoted}; do n=\$((n+1)); [ \$n -ge $max_restarts ] && exit 1; sleep 30; done"

if [[ $nodes -eq 1 ]]; then
  run bash -c "$loop"
else
  sbatch_args=(--nodes="$nodes" --ntasks-per-node=1 --gpus-per-node="$gpus" --time="$time_limit"
               --job-name="zppo-$(basename "$config" .py)" --output="logs/%x-%j-%N.log")
  if [[ -n "$partition" ]]; then sbatch_args+=(--partition="$partition"); fi
  run mkdir -p logs
  run sbatch "${sbatch_args[@]}" --wrap "srun --kill-on-bad-exit=1 env ZPPO_DISTRIBUTED=1 PYTHONHASHSEED=0 bash -c '$loop'"
fi
