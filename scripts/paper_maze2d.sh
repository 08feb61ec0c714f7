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
# ($RUN_ROOT/sweeps/paper_maze2d), PARTITION, RELREWARD (the relreward command).
# Run it in tmux/screen or with nohup: the launcher waits for its jobs. If it is stopped, the submitted
# jobs go on; running the same command again skips finished runs and resumes the others from their
# checkpoints (the job folders are deterministic), and `relreward report "$SWEEP_DIR"` makes the report.
set -euo pipefail
cd "$(dirname "$0")/.."

launcher=slurm
dry=""
extra=()
for arg in "$@"; do
  case "$arg" in
    --local) launcher=local ;;
    --dry-run) dry=echo ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) extra+=("$arg") ;;
  esac
done

SEEDS=${SEEDS:-0,1,2,3,4}
MAZES=${MAZES:-umaze medium large}
RUN_ROOT=${RUN_ROOT:-runs}
SWEEP_DIR=${SWEEP_DIR:-$RUN_ROOT/sweeps/paper_maze2d}
if [[ -z "${RELREWARD:-}" ]]; then
  if command -v relreward >/dev/null; then RELREWARD=relreward; else RELREWARD=.venv/bin/relreward; fi
fi
launcher_args=("hydra/launcher=$launcher")
if [[ $launcher == slurm && -n "${PARTITION:-}" ]]; then launcher_args+=("hydra.launcher.partition=$PARTITION"); fi

# Diffuser's per-maze horizon and number of diffusion steps.
declare -A HORIZON=([umaze]=128 [medium]=256 [large]=384)
declare -A T=([umaze]=64 [medium]=256 [large]=256)

mkdir -p "$SWEEP_DIR"
pids=()
failed=0
for maze in $MAZES; do
  [[ -n "${HORIZON[$maze]:-}" ]] || { echo "unknown maze '$maze' (umaze, medium, large)" >&2; exit 2; }
  cmd=("$RELREWARD" pipeline --multirun experiment=paper_maze2d "env=maze2d_$maze" "seed=$SEEDS"
       "horizon=${HORIZON[$maze]}" "diffusion.n_steps=${T[$maze]}" "run_root=$RUN_ROOT"
       "hydra.sweep.dir=$SWEEP_DIR" "${launcher_args[@]}" "${extra[@]}")
  if [[ -n $dry ]]; then echo "${cmd[@]}"; continue; fi
  if [[ $launcher == local ]]; then  # one machine: one maze at a time (its seeds run side by side)
    "${cmd[@]}" 2>&1 | tee "$SWEEP_DIR/launch-$maze.log" || failed=1
  else                               # SLURM: all mazes queued at once
    echo "launching maze2d_$maze (log: $SWEEP_DIR/launch-$maze.log)"
    "${cmd[@]}" >"$SWEEP_DIR/launch-$maze.log" 2>&1 &
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
