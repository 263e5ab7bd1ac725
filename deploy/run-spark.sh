#!/usr/bin/env bash
# Classify images on an Apache Spark cluster (standalone master) through
# Beam's portable SparkRunner; the Python code runs in the image built from
# deploy/Dockerfile. This machine is the launcher and must stay up until the
# job ends (it moves the output into place afterwards). See deploy/README.md.
#
# Nightly runs use one OUTPUT for every night with SKIP_DONE=1 (see
# run-dataflow.sh and deploy/README.md); two runs must never write to the
# same OUTPUT at once.
#
# Required environment:
#   SPARK_MASTER_URL spark://HOST:7077
#   INPUT            file, folder or glob every worker can read (gs://, s3://,
#                    hdfs:// or a shared mount); several separated by spaces
#   OUTPUT           output root every worker can write, the same for every
#                    run
#   IMAGE            worker image (only with ENVIRONMENT_TYPE=DOCKER)
# Optional:
#   ENVIRONMENT_TYPE DOCKER (default): each executor starts IMAGE with docker;
#                    EXTERNAL: a worker pool runs beside each executor (IMAGE
#                    started with --worker_pool)
#   WORKER_POOL      worker pool address for EXTERNAL (default: localhost:50000)
#   SDK_WORKER_PARALLELISM  Python worker processes per executor
#                    (default 1; 0 lets the runner choose). Spark's own
#                    parallelism is the cluster's (executors and cores);
#                    Beam's Python SparkRunner has no option for it.
#   SPARK_SUBMIT_UBER_JAR=1 with SPARK_REST_URL (http://HOST:6066): submit
#                    through the master's REST API instead of starting a Java
#                    job server on this machine
#   SPARK_JOB_SERVER_JAR  local path or URL of the Beam Spark job server jar
#                    (default: Beam downloads the 2.77.0 one)
#   MODEL, STORE, RUN_DATE, SKIP_DONE=1 (incremental, what schedules use),
#   OVERWRITE=1 (full rebuild; not with SKIP_DONE=1), IMGCLASS, DRY_RUN=1:
#                    as in run-dataflow.sh
# Arguments are passed on to imgclass as further Beam options.
set -euo pipefail

: "${SPARK_MASTER_URL:?set SPARK_MASTER_URL to the Spark master, spark://HOST:7077}"
: "${INPUT:?set INPUT to the images to classify, on a filesystem the workers can read}"
: "${OUTPUT:?set OUTPUT to an output folder the workers can write}"
fail() { echo "run-spark.sh: $*" >&2; exit 2; }
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

args+=(--runner=SparkRunner
       --spark_master_url="$SPARK_MASTER_URL"
       --environment_type="$ENVIRONMENT_TYPE"
       --environment_config="$environment_config")
[[ -n "${SDK_WORKER_PARALLELISM:-}" ]] && args+=(--sdk_worker_parallelism="$SDK_WORKER_PARALLELISM")
if [[ "${SPARK_SUBMIT_UBER_JAR:-0}" == 1 ]]; then
  : "${SPARK_REST_URL:?set SPARK_REST_URL to the Spark master REST endpoint, http://HOST:6066}"
  args+=(--spark_submit_uber_jar --spark_rest_url="$SPARK_REST_URL")
fi
[[ -n "${SPARK_JOB_SERVER_JAR:-}" ]] && args+=(--spark_job_server_jar="$SPARK_JOB_SERVER_JAR")
args+=("$@")

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "$IMGCLASS" "${args[@]}"; echo
  exit 0
fi
command -v "$IMGCLASS" >/dev/null \
  || fail "'$IMGCLASS' not found: install imgclass or set IMGCLASS"
exec "$IMGCLASS" "${args[@]}"
