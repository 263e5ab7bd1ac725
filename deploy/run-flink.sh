#!/usr/bin/env bash
# Classify images on an Apache Flink cluster through Beam's portable
# FlinkRunner; the Python code runs in the image built from deploy/Dockerfile.
# This machine is the launcher and must stay up until the job ends (it moves
# the output into place afterwards). See deploy/README.md.
#
# Required environment:
#   FLINK_MASTER     JobManager REST address, HOST:PORT (usually port 8081)
#   FLINK_VERSION    the cluster's Flink version, one Beam 2.77 supports:
#                    1.19 1.20 2.0 2.1 2.2
#   INPUT            file, folder or glob every worker can read (gs://, s3://,
#                    hdfs:// or a shared mount); several separated by spaces
#   OUTPUT           output folder every worker can write, one per run
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
#   MODEL, STORE, RUN_DATE, OVERWRITE=1, IMGCLASS, DRY_RUN=1: as in
#                    run-dataflow.sh
# Arguments are passed on to imgclass as further Beam options.
set -euo pipefail

: "${FLINK_MASTER:?set FLINK_MASTER to the Flink JobManager REST address, HOST:PORT}"
: "${FLINK_VERSION:?set FLINK_VERSION to the cluster Flink version (1.19, 1.20, 2.0, 2.1 or 2.2)}"
: "${INPUT:?set INPUT to the images to classify, on a filesystem the workers can read}"
: "${OUTPUT:?set OUTPUT to an output folder the workers can write}"
ENVIRONMENT_TYPE="${ENVIRONMENT_TYPE:-DOCKER}"
case "$ENVIRONMENT_TYPE" in
  DOCKER) : "${IMAGE:?set IMAGE to the worker image built from deploy/Dockerfile}"
          environment_config="$IMAGE" ;;
  EXTERNAL) environment_config="${WORKER_POOL:-localhost:50000}" ;;
  *) echo "run-flink.sh: ENVIRONMENT_TYPE must be DOCKER or EXTERNAL, got '$ENVIRONMENT_TYPE'" >&2
     exit 2 ;;
esac

RUN_DATE="${RUN_DATE:-$(date -u +%F)}"
IMGCLASS="${IMGCLASS:-imgclass}"

args=()
# --store is an option of imgclass itself, so it goes before "classify".
[[ -n "${STORE:-}" ]] && args+=(--store "$STORE")
args+=(classify)
read -r -a patterns <<< "$INPUT"
for pattern in "${patterns[@]}"; do args+=(--input "$pattern"); done
args+=(--output "$OUTPUT" --model "${MODEL:-digits-cnn@latest}"
       --partition-by run_date --run-date "$RUN_DATE")
[[ "${OVERWRITE:-0}" == 1 ]] && args+=(--overwrite)

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
  || { echo "run-flink.sh: '$IMGCLASS' not found: install imgclass or set IMGCLASS" >&2; exit 2; }
exec "$IMGCLASS" "${args[@]}"
