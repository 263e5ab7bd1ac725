#!/usr/bin/env bash
# Classify images on Google Cloud Dataflow with the worker image built from
# deploy/Dockerfile. This machine is only the launcher: it checks the model,
# submits the job, waits for it and then moves the output into place, so it
# must stay up until the job ends. See deploy/README.md.
#
# Nightly runs use one OUTPUT for every night with SKIP_DONE=1: each run
# classifies only the files no earlier run in OUTPUT did (with the same model
# version) and adds them under run_date=RUN_DATE; a rerun of the same night
# adds nothing. Two runs must never write to the same OUTPUT at once (the
# schedules in deploy/schedules/ make sure of it; by hand, take their lock:
# flock /var/lock/imgclass.lock deploy/run-dataflow.sh).
#
# Required environment:
#   PROJECT          GCP project id
#   REGION           Dataflow region, e.g. europe-west1
#   TEMP_LOCATION    gs:// folder for Dataflow's temporary files
#   IMAGE            worker image (deploy/Dockerfile), pushed to a registry
#                    the Dataflow workers can pull from
#   INPUT            gs:// file, folder or glob; several separated by spaces
#   OUTPUT           gs:// output root, the same for every run (see
#                    deploy/README.md, "Incremental nightly runs")
#   MAX_NUM_WORKERS  autoscaling ceiling (deploy/README.md, "How many workers")
# Optional:
#   MODEL            NAME[@VERSION] or version folder (default: digits-cnn@prod, an alias moved by
#                    "imgclass models promote NAME@V --alias prod")
#   STORE            model store, e.g. gs://bucket/models (default: the models
#                    installed in the launcher's and the image's package)
#   RUN_DATE         YYYY-MM-DD partition value (default: today, UTC)
#   NUM_WORKERS      workers to start with (default: Dataflow's)
#   MACHINE_TYPE     worker machine type, e.g. n2-standard-4 (default: Dataflow's)
#   JOB_NAME         Dataflow job name (default: imgclass-RUN_DATE-HHMMSS)
#   SERVICE_ACCOUNT  worker service account e-mail
#   SKIP_DONE=1      incremental run (--skip-done), what the schedules use:
#                    classify only the files that no earlier run in OUTPUT
#                    classified with the same model version (same path, size
#                    and modification time) and add them to OUTPUT
#   OVERWRITE=1      full rebuild (--overwrite): classify every input file and
#                    replace all earlier runs in OUTPUT once this one has
#                    succeeded. Not together with SKIP_DONE=1 (exit 2).
#                    With neither, OUTPUT must not hold a run yet.
#   IMGCLASS         the imgclass command (default: imgclass on PATH)
#   DRY_RUN=1        print the command instead of running it
# Arguments are passed on to imgclass as further Beam options, e.g.
#   deploy/run-dataflow.sh --subnetwork=regions/REGION/subnetworks/NAME --no_use_public_ips
set -euo pipefail

: "${PROJECT:?set PROJECT to your GCP project id}"
: "${REGION:?set REGION to the Dataflow region, e.g. europe-west1}"
: "${TEMP_LOCATION:?set TEMP_LOCATION to a gs:// folder for temporary files}"
: "${IMAGE:?set IMAGE to the worker image built from deploy/Dockerfile}"
: "${INPUT:?set INPUT to the gs:// images to classify (file, folder or glob)}"
: "${OUTPUT:?set OUTPUT to a gs:// output folder}"
: "${MAX_NUM_WORKERS:?set MAX_NUM_WORKERS, the autoscaling ceiling (deploy/README.md, How many workers)}"

SCRIPT=run-dataflow.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[[ "$TEMP_LOCATION" == gs://* ]] || fail "TEMP_LOCATION must be a gs:// folder, got '$TEMP_LOCATION'"
[[ "$OUTPUT" == *://* ]] || fail "OUTPUT must be on a shared filesystem such as gs://, Dataflow workers cannot see '$OUTPUT'"

on_gcs() {
  [[ "$1" == *://* ]] || fail "INPUT must be on a shared filesystem such as gs://, Dataflow workers cannot see '$1'"
}
classify_args on_gcs

args+=(--runner=DataflowRunner
       --project="$PROJECT"
       --region="$REGION"
       --temp_location="$TEMP_LOCATION"
       --job_name="${JOB_NAME:-imgclass-$RUN_DATE-$(date -u +%H%M%S)}"
       # Workers run the image as it is: imgclass, Theano, g++ and the warm
       # compile cache are in it, so nothing is staged or pip-installed.
       --sdk_container_image="$IMAGE"
       --sdk_location=container
       --experiments=use_runner_v2
       --max_num_workers="$MAX_NUM_WORKERS")
[[ -n "${NUM_WORKERS:-}" ]] && args+=(--num_workers="$NUM_WORKERS")
[[ -n "${MACHINE_TYPE:-}" ]] && args+=(--machine_type="$MACHINE_TYPE")
[[ -n "${SERVICE_ACCOUNT:-}" ]] && args+=(--service_account_email="$SERVICE_ACCOUNT")
args+=("$@")

run_imgclass " with apache-beam[gcp] (see deploy/README.md)"
