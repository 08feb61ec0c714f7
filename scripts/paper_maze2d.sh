#!/usr/bin/env bash
# The paper's Maze2D experiment in one command: U-maze, medium and large x seeds 0-4, each a full
# pipeline (datasets, base and expert diffusion models, relative reward, reward maps and their correlation
# with the ground truth), as SLURM jobs; then the report (mean ± s.e. over seeds per maze).
#
#   scripts/paper_maze2d.sh                          # SLURM (cluster's default partition)
#   PARTITION=gpu scripts/paper_maze2d.sh            # SLURM partition
#   scripts/paper_maze2d.sh --local                  # this machine, submitit's local executor
#   scripts/paper_maze2d.sh --dry-run                # print the commands only
#   scripts/paper_maze2d.sh hydra.launcher.timeout_min=720 logger.entity=me   # extra Hydra overrides
#
# Environment: SEEDS (0,1,2,3,4), MAZES ("umaze medium large"), RUN_ROOT (runs), SWEEP_DIR
# ($RUN_ROOT/sweeps/paper_maze2d), PARTITION, GPUS (per job on SLURM: 1; 0 for a CPU
# partition), RELREWARD (the relreward command).
# Run it in tmux/screen or with nohup: the launcher waits for its jobs. If it is stopped, SLURM jobs
# go on (--local ones stop with it); running the same command again skips finished runs and resumes the others
# from their checkpoints (the job folders are deterministic), and `relreward report "$SWEEP_DIR"` makes the report.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/sweep_lib.sh
sweep_init "$0" paper_maze2d "$@"
MAZES=${MAZES:-umaze medium large}

# Diffuser's per-maze horizon and number of diffusion steps.
declare -A HORIZON=([umaze]=128 [medium]=256 [large]=384)
declare -A T=([umaze]=64 [medium]=256 [large]=256)

for maze in $MAZES; do
  [[ -n "${HORIZON[$maze]:-}" ]] || { echo "unknown maze '$maze' (umaze, medium, large)" >&2; exit 2; }
  sweep_launch "$maze" "$RELREWARD" pipeline --multirun experiment=paper_maze2d "env=maze2d_$maze" "seed=$SEEDS" \
    "horizon=${HORIZON[$maze]}" "diffusion.n_steps=${T[$maze]}"
done
sweep_finish
