"""imgclass nightly on Dataflow, scheduled by Airflow.

Why a BashOperator running deploy/run-dataflow.sh and not Beam's
BeamRunPythonPipelineOperator: that operator runs ``PYTHON PY_FILE
--key=value ...`` and, on DataflowRunner, stops following the process as soon
as the process logs the Dataflow job id; from then on it only waits for the
Dataflow job. imgclass's launcher is not done then: after the job it moves
the output from _staging into place, checks the counts and writes
_manifest.json and _SUCCESS. With that operator the task could succeed before
(or without) that step. It also cannot put imgclass's sub-command
``classify`` before the options. The launch script is the same one that runs
by hand and from cron, and the task waits for it to exit.

If the task is stopped, the launcher stops but the Dataflow job goes on:
cancel it in Dataflow (its name starts with imgclass-<ds>). Its results are
never published (only the launcher publishes), so the retry does not add them
twice, but the orphaned job still costs worker time until it is cancelled.

The Airflow workers need a checkout of this repository at /opt/imgclass
with imgclass installed in /opt/imgclass/venv (Python 3.11, g++ on the PATH,
apache-beam[gcp]==2.77.0), and Google credentials allowed to start Dataflow
jobs. Settings are Airflow Variables (imgclass_project, imgclass_region,
imgclass_temp_location, imgclass_image, imgclass_input, imgclass_output_root,
imgclass_max_num_workers, imgclass_machine_type), read when the task runs.

Every run writes into the same output root, imgclass_output_root, with
SKIP_DONE=1 (--skip-done): it classifies only the files that no earlier run
there classified with the same model version (same path, size and
modification time), so a growing bucket costs only its new files, and
publishes them under predictions/run_date=<ds>/ and errors/run_date=<ds>/.
A retry, or clearing a finished run, adds nothing that is already there (and
finishes publishing a run that was killed while publishing). ``ds`` is the
run's logical date (with a cron schedule, Airflow 2 gives the day before the
run, Airflow 3 the day of the run); it only names the partition: a run for an
old ds (a backfill) puts the files that are new *now* into run_date=<ds>. A
full rebuild (OVERWRITE=1 instead of SKIP_DONE=1) is a separate run by hand
(deploy/README.md), never at the same time as this DAG.

Two runs must never write to the same output root at once: max_active_runs=1
and the single task keep this DAG's runs apart; do not also schedule the same
root from cron or Kubernetes.
"""

from __future__ import annotations

import datetime

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.operators.bash import BashOperator

# The trailing space matters: Airflow reads a command ending in ".sh" as the
# name of a template file.
BASH_COMMAND = "exec /opt/imgclass/deploy/run-dataflow.sh "

# The launch script's settings (see its header), rendered when the task runs.
ENV = {
    "IMGCLASS": "/opt/imgclass/venv/bin/imgclass",
    "PROJECT": "{{ var.value.imgclass_project }}",
    "REGION": "{{ var.value.imgclass_region }}",
    "TEMP_LOCATION": "{{ var.value.imgclass_temp_location }}",
    "IMAGE": "{{ var.value.imgclass_image }}",
    "INPUT": "{{ var.value.imgclass_input }}",
    "OUTPUT": "{{ var.value.imgclass_output_root }}",
    "RUN_DATE": "{{ ds }}",
    "SKIP_DONE": "1",
    "MAX_NUM_WORKERS": "{{ var.value.imgclass_max_num_workers }}",
    "MACHINE_TYPE": "{{ var.value.imgclass_machine_type }}",
}

with DAG(
    dag_id="imgclass_nightly",
    schedule="15 2 * * *",
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,  # never two runs writing the output root at once
    tags=["imgclass"],
) as dag:
    BashOperator(
        task_id="classify",
        bash_command=BASH_COMMAND,
        env=ENV,
        append_env=True,  # keep PATH, HOME and the credentials
        retries=1,
        retry_delay=datetime.timedelta(minutes=30),
    )
