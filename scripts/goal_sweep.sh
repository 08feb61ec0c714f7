#!/usr/bin/env bash
# A maze's goal set in one command: a full pipeline per goal of the env's `goal_set` (each goal gets its own base
# and expert datasets and models), then the report: per goal, and over the goals mean ± s.e. and the worst goal,
# with one figure of every goal's reward map (reward_maps_by_task.png).
#
#   scripts/goal_sweep.sh maze2d_umaze                     # every goal of the U-maze's set, here, one at a time
#   GOALS='[1,1],[3,1]' scripts/goal_sweep.sh maze2d_umaze  # some goals
#   scripts/goal_sweep.sh maze2d_medium --local            # submitit's local executor (goals side by side)
#   PARTITION=cpu scripts/goal_sweep.sh maze2d_large --slurm seed=1,2   # SLURM; extra Hydra overrides
#   scripts/goal_sweep.sh maze2d_umaze --dry-run           # print the command only
#
# Environment: GOALS (default: the env's goal_set), RUN_ROOT (runs), SWEEP_DIR ($RUN_ROOT/sweeps/goals-<env>),
# PARTITION (SLURM), RELREWARD (the relreward command). Running it again skips finished goals and resumes the
# others. The diffusion time of the headline numbers is extract.report_t, fixed in the config.
set -euo pipefail
cd "$(dirname "$0")/.."
env_name=${1:-}
if [[ $env_name == -h || $env_name == --help ]]; then sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0; fi
if [[ -z $env_name ]]; then sed -n '2,/^[^#]/{/^#/p}' "$0" >&2; echo "goal_sweep.sh: name the maze env first" >&2; exit 2; fi
shift
[[ -f configs/env/$env_name.yaml ]] || { echo "no env config configs/env/$env_name.yaml" >&2; exit 2; }
if [[ -z "${RELREWARD:-}" ]]; then
  if command -v relreward >/dev/null; then RELREWARD=relreward; else RELREWARD=.venv/bin/relreward; fi
fi
PYTHON=${PYTHON:-$(dirname "$(command -v "$RELREWARD")")/python}
[[ -x $PYTHON ]] || PYTHON=python3
GOALS=${GOALS:-$("$PYTHON" -c 'import sys, yaml
goals = yaml.safe_load(open(sys.argv[1])).get("goal_set")
print(",".join(f"[{r},{c}]" for r, c in goals) if goals else "")' "configs/env/$env_name.yaml")}
[[ -n $GOALS ]] || { echo "configs/env/$env_name.yaml has no goal_set" >&2; exit 2; }
RUN_ROOT=${RUN_ROOT:-runs}
SWEEP_DIR=${SWEEP_DIR:-$RUN_ROOT/sweeps/goals-$env_name}
launcher=() dry="" extra=()
for arg in "$@"; do
  case "$arg" in
    --local) launcher=("hydra/launcher=local") ;;
    --slurm) launcher=("hydra/launcher=slurm" ${PARTITION:+"hydra.launcher.partition=$PARTITION"}) ;;
    --dry-run) dry=echo ;;
    *) extra+=("$arg") ;;
  esac
done
$dry "$RELREWARD" pipeline --multirun "env=$env_name" "env.goal_cell=$GOALS" "run_root=$RUN_ROOT" \
  "hydra.sweep.dir=$SWEEP_DIR" "${launcher[@]}" "${extra[@]}"
$dry "$RELREWARD" report "$SWEEP_DIR"
