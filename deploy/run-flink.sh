#!/usr/bin/env bash
# Classify images on an Apache Flink cluster through Beam's portable
# FlinkRunner; the Python code runs in the image built from deploy/Dockerfile.
# This machine is the launcher and must stay up until the job ends (it moves
# the output into place afterwards). See deploy/README.md.
#
# Nightly runs use one OUTPUT for every night with SKIP_DONE=1 (see
# run-dataflow.sh and deploy/README.md); two runs must never write to the
# same OUTPUT at once.
#
# Required environment:
#   FLINK_MASTER     JobManager REST address, HOST:PORT (usually port 8081)
#   FLINK_VERSION    the cluster's Flink version, one Beam 2.77 supports:
#                    1.19 1.20 2.0 2.1 2.2
#   INPUT            file, folder or glob every worker can read (gs://, s3://,
#                    hdfs:// or a shared mount); several separated by spaces
#   OUTPUT           output root every worker can write, the same for every
#                    run
#   IMAGE            worker image (only with ENVIRONMENT_TYPE=DOCKER)
# Optional:
#   ENVIRONMENT_TYPE DOCKER (default): each TaskManager starts IMAGE with
#                    docker; EXTERNAL: a worker pool runs beside each
#                    TaskManager (IMAGE started with --worker_pool)
#   WORKER_POOL      worker pool address for EXTERNAL (default: localhost:50000)
#   PARALLELISM      Flink parallelism (default: the cluster's)
#   SDK_WORKER_PARALLELISM  Python worker processes per TaskManager
#                    (default 1; 0 lets the runner choose)
#   FLINK_SUBMIT_UBER_JAR=1  upload the job to FLINK_MASTER's REST API instead
#                    of starting a Java job server on this machine
#   MODEL, STORE, RUN_DATE, SKIP_DONE=1 (incremental, what schedules use),
#   OVERWRITE=1 (full rebuild; not with SKIP_DONE=1), IMGCLASS, DRY_RUN=1:
#                    as in run-dataflow.sh
# Arguments are passed on to imgclass as further Beam options.
set -euo pipefail

: "${FLINK_MASTER:?set FLINK_MASTER to the Flink JobManager REST address, HOST:PORT}"
: "${FLINK_VERSION:?set FLINK_VERSION to the cluster Flink version (1.19, 1.20, 2.0, 2.1 or 2.2)}"
: "${INPUT:?set INPUT to the images to classify, on a filesystem the workers can read}"
: "${OUTPUT:?set OUTPUT to an output folder the workers can write}"
fail() { echo "run-flink.sh: $*" >&2; exit 2; }
ENVIRONMENT_TYPE="${ENVIRONMENT_TYPE:-DOCKER}"
case "$ENVIRONMENT_TYPE" in
  DOCKER) : "${IMAGE:?set IMAGE to the worker image built from deploy/Dockerfile}"
          environment_config="$IMAGE" ;;
  EXTERNAL) environment_config="${WORKER_POOL:-localhost:50000}" ;;
  *) fail "ENVIRONMENT_TYPE must be DOCKER or EXTERNAL, got '$ENVIRONMENT_TYPE'" ;;
esac

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

args=()
# --store is an option of imgclass itself, so it goes before "classify".
[[ -n "${STORE:-}" ]] && args+=(--store "$STORE")
args+=(classify)
read -r -a patterns <<< "$INPUT"
for pattern in "${patterns[@]}"; do args+=(--input "$pattern"); done
args+=(--output "$OUTPUT" --model "${MODEL:-digits-cnn@latest}"
       --partition-by run_date --run-date "$RUN_DATE")
[[ "$SKIP_DONE" == 1 ]] && args+=(--skip-done)
[[ "$OVERWRITE" == 1 ]] && args+=(--overwrite)

args+=(--runner=FlinkRunner
       --flink_master="$FLINK_MASTER"
       --flink_version="$FLINK_VERSION"
       --environment_type="$ENVIRONMENT_TYPE"
       --environment_config="$environment_config")
[[ -n "${PARALLELISM:-}" ]] && args+=(--parallelism="$PARALLELISM")
[[ -n "${SDK_WORKER_PARALLELISM:-}" ]] && args+=(--sdk_worker_parallelism="$SDK_WORKER_PARALLELISM")
[[ "${FLINK_SUBMIT_UBER_JAR:-0}" == 1 ]] && args+=(--flink_submit_uber_jar)
args+=("$@")

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "$IMGCLASS" "${args[@]}"; echo
  exit 0
fi
command -v "$IMGCLASS" >/dev/null \
  || fail "'$IMGCLASS' not found: install imgclass or set IMGCLASS"
exec "$IMGCLASS" "${args[@]}"
