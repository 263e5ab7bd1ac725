# Shared by the launch scripts (sourced, not run): the checks and the
# imgclass arguments every runner needs, and the final exec.
#
# The caller sets SCRIPT (its name, for messages) and has checked INPUT and
# OUTPUT. Optional: MODEL, STORE, RUN_DATE, SKIP_DONE, OVERWRITE, IMGCLASS,
# DRY_RUN (see run-dataflow.sh for what each means).

fail() { echo "$SCRIPT: $*" >&2; exit 2; }

RUN_DATE="${RUN_DATE:-$(date -u +%F)}"
IMGCLASS="${IMGCLASS:-imgclass}"
SKIP_DONE="${SKIP_DONE:-0}"
OVERWRITE="${OVERWRITE:-0}"
for flag in SKIP_DONE OVERWRITE; do
  [[ "${!flag}" == [01] ]] || fail "$flag must be 1 or 0, got '${!flag}'"
done
if [[ "$SKIP_DONE" == 1 && "$OVERWRITE" == 1 ]]; then
  fail "SKIP_DONE=1 and OVERWRITE=1 cannot be combined: SKIP_DONE=1 adds this run to the earlier runs in OUTPUT, OVERWRITE=1 replaces them all (a full rebuild); set only one"
fi

# classify_args [CHECK]: fills the array "args" with imgclass's own
# arguments; CHECK, if given, is a function called with each input pattern.
classify_args() {
  args=()
  # --store is an option of imgclass itself, so it goes before "classify".
  [[ -n "${STORE:-}" ]] && args+=(--store "$STORE")
  args+=(classify)
  local patterns pattern
  read -r -a patterns <<< "$INPUT"
  for pattern in "${patterns[@]}"; do
    [[ -n "${1:-}" ]] && "$1" "$pattern"
    args+=(--input "$pattern")
  done
  # --allow-empty: a night with no files in INPUT is not a mistake here.
  args+=(--output "$OUTPUT" --model "${MODEL:-digits-cnn@prod}"
         --partition-by run_date --run-date "$RUN_DATE" --allow-empty)
  [[ "$SKIP_DONE" == 1 ]] && args+=(--skip-done)
  [[ "$OVERWRITE" == 1 ]] && args+=(--overwrite)
  return 0
}

# portable_environment: for the portable runners (Flink, Spark), fills the
# array "environment" with where the SDK workers run: the worker image
# (ENVIRONMENT_TYPE=DOCKER, IMAGE) or a worker pool (EXTERNAL, WORKER_POOL).
portable_environment() {
  ENVIRONMENT_TYPE="${ENVIRONMENT_TYPE:-DOCKER}"
  local config
  case "$ENVIRONMENT_TYPE" in
    DOCKER) : "${IMAGE:?set IMAGE to the worker image built from deploy/Dockerfile}"
            config="$IMAGE" ;;
    EXTERNAL) config="${WORKER_POOL:-localhost:50000}" ;;
    *) fail "ENVIRONMENT_TYPE must be DOCKER or EXTERNAL, got '$ENVIRONMENT_TYPE'" ;;
  esac
  environment=(--environment_type="$ENVIRONMENT_TYPE"
               --environment_config="$config")
}

# run_imgclass [HINT]: prints the command with DRY_RUN=1, else runs it.
run_imgclass() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "$IMGCLASS" "${args[@]}"; echo
    exit 0
  fi
  command -v "$IMGCLASS" >/dev/null \
    || fail "'$IMGCLASS' not found: install imgclass${1:-} or set IMGCLASS"
  exec "$IMGCLASS" "${args[@]}"
}
