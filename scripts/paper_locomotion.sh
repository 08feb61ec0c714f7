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
# PARTITION, GPUS (per job on SLURM: 1; 0 for a CPU
# partition), RELREWARD (the relreward command).
# Run it in tmux/screen or with nohup: the launcher waits for its jobs. If it is stopped, SLURM jobs
# go on (--local ones stop with it); running the same command again skips finished runs and resumes the others
# from their checkpoints, and `relreward report "$SWEEP_DIR"` makes the report.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/sweep_lib.sh
sweep_init "$0" paper_locomotion "$@"
TASKS=${TASKS:-hopper walker2d halfcheetah}

# Diffuser's per-task settings (config/locomotion.py): HalfCheetah plans 4 steps (configs/env/halfcheetah.yaml)
# with a shallower U-Net and weaker, later-stopped guidance; Hopper and Walker2d keep the preset's defaults.
task_overrides() {
  case "$1" in
    halfcheetah*) echo "model.dim_mults=[1,4,8] reward.dim_mults=[1,4,8] steer.scale=0.001 steer.t_stopgrad=4" ;;
    *) echo "" ;;
  esac
}

for task in $TASKS; do
  read -r -a per_task <<<"$(task_overrides "$task")"
  sweep_launch "$task" "$RELREWARD" pipeline --multirun experiment=paper_locomotion "env=$task" "seed=$SEEDS" \
    pipeline.steer=true "${per_task[@]}"
done
sweep_finish
