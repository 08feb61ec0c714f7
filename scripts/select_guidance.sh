#!/usr/bin/env bash
# Honest selection of the guidance settings, then the held-out evaluation, in one command:
#   1. the `guided` planner over a grid of steer.scale x steer.t_stopgrad on the SELECTION seeds only;
#   2. the setting of highest mean return there (relreward report --select guided/return_mean; METRIC sets
#      another, e.g. guided/expert_share for the digits);
#   3. every planner (base, guided, ranked, guided_ranked, expert) at that setting on the EVAL seeds, which
#      were never used to choose, with paired differences to base; then the report of both.
#
#   ENV=halfcheetah scripts/select_guidance.sh                      # models of `relreward pipeline` (same name)
#   ENV=hopper SCALES=0.1,0.3,1 STOPGRADS=0,2 scripts/select_guidance.sh base_model=... expert_model=... reward_model=...
#
# Environment: ENV (halfcheetah), PRESET (locomotion_quick), METRIC (guided/return_mean), SCALES (0.1,0.3,1,3),
# STOPGRADS (0,2,5), SELECT_SEEDS ([0]), EVAL_SEEDS ([1,2,3]), EPISODES (10 per seed), TAG (none: a name for a
# variant, e.g. authors), OUT (runs/selection/$ENV[-$TAG]: the selection sweep), HELDOUT_ROOT (runs/heldout: the held-out run goes to
# $HELDOUT_ROOT/$ENV[-$TAG], so that `relreward report runs/heldout` tables every task), RELREWARD.
# Extra arguments are Hydra overrides for every step (model paths, threads=1, formulation=authors, ...).
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0; fi
cd "$(dirname "$0")/.."
ENV=${ENV:-halfcheetah}
PRESET=${PRESET:-locomotion_quick}
SCALES=${SCALES:-0.1,0.3,1,3}
STOPGRADS=${STOPGRADS:-0,2,5}
SELECT_SEEDS=${SELECT_SEEDS:-[0]}
EVAL_SEEDS=${EVAL_SEEDS:-[1,2,3]}
EPISODES=${EPISODES:-10}
METRIC=${METRIC:-guided/return_mean}
NAME=$ENV${TAG:+-$TAG}
OUT=${OUT:-runs/selection/$NAME}
HELDOUT_ROOT=${HELDOUT_ROOT:-runs/heldout}
if [[ -z "${RELREWARD:-}" ]]; then
  if command -v relreward >/dev/null; then RELREWARD=relreward; else RELREWARD=.venv/bin/relreward; fi
fi
common=("env=$ENV" "experiment=$PRESET" "steer.n_episodes=$EPISODES" "$@")

echo "== 1. selection: guided planner, scale in {$SCALES} x t_stopgrad in {$STOPGRADS}, seeds $SELECT_SEEDS"
"$RELREWARD" steer-eval --multirun "${common[@]}" "steer.planners=[guided]" "steer.seeds=$SELECT_SEEDS" \
  "steer.scale=$SCALES" "steer.t_stopgrad=$STOPGRADS" "hydra.sweep.dir=$OUT/select"
if ! "$RELREWARD" report "$OUT/select" --select "$METRIC" >"$OUT/select/report.log"; then
  echo "select_guidance.sh: nothing was chosen (the report's message is above), so nothing was evaluated on the" \
    "held-out seeds" >&2
  exit 1
fi
cat "$OUT/select/report.log"
mapfile -t chosen < <(sed -n '/^selected by/,$p' "$OUT/select/report.log" | tail -n +2)
echo "== 2. chosen on seeds $SELECT_SEEDS by $METRIC: ${chosen[*]}"

echo "== 3. held-out evaluation on seeds $EVAL_SEEDS, every planner"
"$RELREWARD" steer-eval "${common[@]}" "steer.seeds=$EVAL_SEEDS" "${chosen[@]}" "hydra.run.dir=$HELDOUT_ROOT/$NAME"
"$RELREWARD" report "$HELDOUT_ROOT"
