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
SCRIPT=run-spark.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
portable_environment

classify_args

args+=(--runner=SparkRunner
       --spark_master_url="$SPARK_MASTER_URL"
       "${environment[@]}")
[[ -n "${SDK_WORKER_PARALLELISM:-}" ]] && args+=(--sdk_worker_parallelism="$SDK_WORKER_PARALLELISM")
if [[ "${SPARK_SUBMIT_UBER_JAR:-0}" == 1 ]]; then
  : "${SPARK_REST_URL:?set SPARK_REST_URL to the Spark master REST endpoint, http://HOST:6066}"
  args+=(--spark_submit_uber_jar --spark_rest_url="$SPARK_REST_URL")
fi
[[ -n "${SPARK_JOB_SERVER_JAR:-}" ]] && args+=(--spark_job_server_jar="$SPARK_JOB_SERVER_JAR")
args+=("$@")

run_imgclass
