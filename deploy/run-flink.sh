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
SCRIPT=run-flink.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
portable_environment

classify_args

args+=(--runner=FlinkRunner
       --flink_master="$FLINK_MASTER"
       --flink_version="$FLINK_VERSION"
       "${environment[@]}")
[[ -n "${PARALLELISM:-}" ]] && args+=(--parallelism="$PARALLELISM")
[[ -n "${SDK_WORKER_PARALLELISM:-}" ]] && args+=(--sdk_worker_parallelism="$SDK_WORKER_PARALLELISM")
[[ "${FLINK_SUBMIT_UBER_JAR:-0}" == 1 ]] && args+=(--flink_submit_uber_jar)
args+=("$@")

run_imgclass
