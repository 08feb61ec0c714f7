#!/usr/bin/env bash
# The paper's locomotion experiment in one command: Hopper, HalfCheetah and Walker2d x seeds 0-4, each a
# full pipeline with steering (base and expert diffusion models, relative reward, then the unsteered base,
# reward-steered base and expert planners rolled out in the environment), as SLURM jobs; then the report
# (D4RL-normalized scores, mean ± s.e. over seeds per task).
#
#   scripts/paper_locomotion.sh                      # SLURM (cluster's default partition)
#   PARTITION=gpu scripts/paper_locomotion.sh        # SLURM partition
#   scripts/paper_locomotion.sh --local              # this machine, submitit's local executor
#   scripts/paper_locomotion.sh --dry-run            # print the commands only
#   scripts/paper_locomotion.sh steer.scale=0.01,0.1,0.3     # extra Hydra overrides (sweeps too)
#
# Environment: SEEDS (0,1,2,3,4), TASKS ("hopper walker2d halfcheetah": env configs, configs/env/<task>.yaml,
# holding the base/expert dataset pairing), RUN_ROOT (runs), SWEEP_DIR ($RUN_ROOT/sweeps/paper_locomotion),
# PARTITION, RELREWARD (the relreward command).
# Run it in tmux/screen or with nohup: the launcher waits for its jobs. If it is stopped, the submitted
# jobs go on; running the same command again skips finished runs and resumes the others from their
# checkpoints, and `relreward report "$SWEEP_DIR"` makes the report.
set -euo pipefail
cd "$(dirname "$0")/.."

launcher=slurm
dry=""
extra=()
for arg in "$@"; do
  case "$arg" in
    --local) launcher=local ;;
    --dry-run) dry=echo ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) extra+=("$arg") ;;
  esac
done

SEEDS=${SEEDS:-0,1,2,3,4}
TASKS=${TASKS:-hopper walker2d halfcheetah}
RUN_ROOT=${RUN_ROOT:-runs}
SWEEP_DIR=${SWEEP_DIR:-$RUN_ROOT/sweeps/paper_locomotion}
if [[ -z "${RELREWARD:-}" ]]; then
  if command -v relreward >/dev/null; then RELREWARD=relreward; else RELREWARD=.venv/bin/relreward; fi
fi
launcher_args=("hydra/launcher=$launcher")
if [[ $launcher == slurm && -n "${PARTITION:-}" ]]; then launcher_args+=("hydra.launcher.partition=$PARTITION"); fi

# Diffuser's per-task settings (config/locomotion.py): HalfCheetah plans 4 steps with a shallower U-Net
# and weaker, later-stopped guidance; Hopper and Walker2d keep the preset's defaults.
task_overrides() {
  case "$1" in
    halfcheetah*) echo "horizon=4 model.dim_mults=[1,4,8] reward.dim_mults=[1,4,8] steer.scale=0.001 steer.t_stopgrad=4" ;;
    *) echo "" ;;
  esac
}

mkdir -p "$SWEEP_DIR"
pids=()
failed=0
for task in $TASKS; do
  read -r -a per_task <<<"$(task_overrides "$task")"
  cmd=("$RELREWARD" pipeline --multirun experiment=paper_locomotion "env=$task" "seed=$SEEDS"
       pipeline.steer=true "${per_task[@]}" "run_root=$RUN_ROOT" "hydra.sweep.dir=$SWEEP_DIR"
       "${launcher_args[@]}" "${extra[@]}")
  if [[ -n $dry ]]; then echo "${cmd[@]}"; continue; fi
  if [[ $launcher == local ]]; then  # one machine: one task at a time (its seeds run side by side)
    "${cmd[@]}" 2>&1 | tee "$SWEEP_DIR/launch-$task.log" || failed=1
  else                               # SLURM: all tasks queued at once
    echo "launching $task (log: $SWEEP_DIR/launch-$task.log)"
    "${cmd[@]}" >"$SWEEP_DIR/launch-$task.log" 2>&1 &
    pids+=($!)
  fi
done
[[ -n $dry ]] && { echo "$RELREWARD" report "$SWEEP_DIR"; exit 0; }

for pid in "${pids[@]+"${pids[@]}"}"; do wait "$pid" || failed=1; done
"$RELREWARD" report "$SWEEP_DIR"
if [[ $failed != 0 ]]; then
  echo "some jobs failed: see $SWEEP_DIR/launch-*.log and $SWEEP_DIR/.submitit/*/; run the same command again to resume" >&2
  exit 1
fi
