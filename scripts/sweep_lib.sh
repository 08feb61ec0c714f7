# Shared by the paper_*.sh launchers (sourced, not run): argument parsing, one sweep per task, the report.
#
#   sweep_init <script> <sweep name> "$@"                 parse --local/--dry-run/--help and extra overrides
#   sweep_launch <task> <command...>                       run one task's --multirun (SLURM: in the background)
#   sweep_finish                                           wait for the launchers, then write the report

sweep_init() {
  local script=$1 name=$2
  shift 2
  launcher=slurm dry="" extra=() pids=() tasks=() failed_tasks=() failed=0
  for arg in "$@"; do
    case "$arg" in
      --local) launcher=local ;;
      --dry-run) dry=echo ;;
      -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$script"; exit 0 ;;  # the script's leading comment
      *) extra+=("$arg") ;;
    esac
  done
  SEEDS=${SEEDS:-0,1,2,3,4}
  RUN_ROOT=${RUN_ROOT:-runs}
  SWEEP_DIR=${SWEEP_DIR:-$RUN_ROOT/sweeps/$name}
  if [[ -z "${RELREWARD:-}" ]]; then
    if command -v relreward >/dev/null; then RELREWARD=relreward; else RELREWARD=.venv/bin/relreward; fi
  fi
  launcher_args=("hydra/launcher=$launcher")
  if [[ $launcher == slurm && -n "${PARTITION:-}" ]]; then launcher_args+=("hydra.launcher.partition=$PARTITION"); fi
  # the paper's sizes want a GPU per job; GPUS=0 sends them to a CPU partition
  if [[ $launcher == slurm && ${GPUS:-1} != 0 ]]; then launcher_args+=("hydra.launcher.gpus_per_node=${GPUS:-1}"); fi
  mkdir -p "$SWEEP_DIR"
}

sweep_launch() {
  local task=$1
  shift
  local cmd=("$@" "run_root=$RUN_ROOT" "hydra.sweep.dir=$SWEEP_DIR" "${launcher_args[@]}" "${extra[@]}")
  if [[ -n $dry ]]; then echo "${cmd[@]}"; return; fi
  if [[ $launcher == local ]]; then  # one machine: one task at a time (its seeds run side by side)
    "${cmd[@]}" 2>&1 | tee "$SWEEP_DIR/launch-$task.log" || { failed=$?; failed_tasks+=("$task"); }
  else                               # SLURM: all tasks queued at once
    echo "launching $task (log: $SWEEP_DIR/launch-$task.log)"
    "${cmd[@]}" >"$SWEEP_DIR/launch-$task.log" 2>&1 &
    pids+=($!) tasks+=("$task")
  fi
}

sweep_finish() {
  [[ -n $dry ]] && { echo "$RELREWARD" report "$SWEEP_DIR"; exit 0; }
  local i task
  for i in "${!pids[@]}"; do wait "${pids[$i]}" || { failed=$?; failed_tasks+=("${tasks[$i]}"); }; done
  # the report of what finished; when a launch failed, its reason (not the report's) is what to see last
  "$RELREWARD" report "$SWEEP_DIR" || [[ $failed != 0 ]] || exit $?
  if [[ $failed != 0 ]]; then
    for task in "${failed_tasks[@]}"; do
      echo "== $task: the launch failed; the end of $SWEEP_DIR/launch-$task.log:" >&2
      tail -n 5 "$SWEEP_DIR/launch-$task.log" >&2
    done
    echo "some jobs failed: see $SWEEP_DIR/launch-*.log and $SWEEP_DIR/.submitit/*/; run the same command again to resume" >&2
    exit "$failed"
  fi
}
