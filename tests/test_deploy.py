"""Checks of deploy/: launch scripts, worker image, schedules.

Nothing here needs docker, a cluster, the network or Airflow: the scripts run
against a stand-in ``imgclass`` that prints its arguments, and those are
parsed the way ``imgclass classify`` parses them (its own parser, then Beam's
PipelineOptions, which must know every remaining option). One test runs the
crontab's local-machine line with the real ``imgclass`` on a few images, to
check that nightly runs into one output root add only new files.
"""

from __future__ import annotations

import ast
import datetime
import fcntl
import importlib.util
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tomllib

import apache_beam
import pyarrow.parquet as pq
import pytest
import yaml
from apache_beam.options.pipeline_options import (
    DebugOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)

from pipeline.cli import build_parser
from tests.conftest import write_digits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
SCHEDULES = os.path.join(DEPLOY, "schedules")
IMAGE = "registry.example/imgclass/worker:test"

# Per script: the required variables (set to these values) and the optional
# ones, all set, so that every option the script can pass gets checked.
SCRIPTS = {
    "run-dataflow.sh": (
        {"PROJECT": "my-project", "REGION": "europe-west1",
         "TEMP_LOCATION": "gs://bucket/tmp", "IMAGE": IMAGE,
         "INPUT": "gs://bucket/in/** gs://bucket/more/*.png",
         "OUTPUT": "gs://bucket/out/2026-11-26", "MAX_NUM_WORKERS": "20"},
        {"NUM_WORKERS": "2", "MACHINE_TYPE": "n2-standard-4",
         "SERVICE_ACCOUNT": "runner@my-project.iam.gserviceaccount.com",
         "STORE": "gs://bucket/models", "MODEL": "digits-cnn@1",
         "RUN_DATE": "2026-11-26", "SKIP_DONE": "1"}),
    "run-flink.sh": (
        {"FLINK_MASTER": "flink-jobmanager:8081", "FLINK_VERSION": "1.19",
         "INPUT": "s3://bucket/in/**", "OUTPUT": "s3://bucket/out",
         "IMAGE": IMAGE},
        {"PARALLELISM": "16", "SDK_WORKER_PARALLELISM": "0",
         "FLINK_SUBMIT_UBER_JAR": "1", "STORE": "s3://bucket/models",
         "RUN_DATE": "2026-11-26", "OVERWRITE": "1"}),
    "run-spark.sh": (
        {"SPARK_MASTER_URL": "spark://spark-master:7077",
         "INPUT": "hdfs://nn/in/**", "OUTPUT": "hdfs://nn/out",
         "IMAGE": IMAGE},
        {"SDK_WORKER_PARALLELISM": "4", "SPARK_SUBMIT_UBER_JAR": "1",
         "SPARK_REST_URL": "http://spark-master:6066",
         "SPARK_JOB_SERVER_JAR": "/opt/beam/spark-job-server.jar",
         "STORE": "hdfs://nn/models", "RUN_DATE": "2026-11-26",
         "SKIP_DONE": "1"}),
}


def check_classify_argv(argv: list[str]):
    """Parses ``imgclass`` arguments as ``imgclass classify`` does; returns
    (imgclass's namespace, Beam's options). Fails on an option neither
    imgclass nor Beam 2.77 knows."""
    args, extra = build_parser().parse_known_args(argv)
    assert args.command == "classify", argv
    assert args.partition_by == "run_date", argv
    # A night whose input folder is empty is not a mistake for a schedule.
    assert args.allow_empty, argv
    stray = [a for a in extra if not a.startswith("--")]
    assert not stray, f"arguments neither imgclass nor Beam reads: {stray}"
    options = PipelineOptions(extra)
    known = options.get_all_options(retain_unknown_options=False)
    every = options.get_all_options(retain_unknown_options=True)
    unknown = sorted(set(every) - set(known))
    assert not unknown, f"options Beam {apache_beam.__version__} does not " \
                        f"know: {unknown}"
    return args, options


@pytest.fixture
def fake_bin(tmp_path):
    """A folder with an ``imgclass`` that prints its arguments, one a line."""
    folder = tmp_path / "bin"
    folder.mkdir()
    fake = folder / "imgclass"
    fake.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    fake.chmod(0o755)
    return str(folder)


def run_bash(argv, env, fake_bin, **kwargs):
    """Runs bash with only PATH (stand-in imgclass first) and ``env``."""
    full = {"PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}", **env}
    return subprocess.run(["bash", *argv], env=full, capture_output=True,
                          text=True, timeout=60, **kwargs)


def run_script(name, env, fake_bin, *args):
    return run_bash([os.path.join(DEPLOY, name), *args], env, fake_bin)


def today_utc() -> set[str]:
    now = datetime.datetime.now(datetime.timezone.utc)
    return {now.date().isoformat(),
            (now - datetime.timedelta(minutes=1)).date().isoformat()}


# Launch scripts ----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_is_valid_bash_and_strict(name):
    path = os.path.join(DEPLOY, name)
    subprocess.run(["bash", "-n", path], check=True)
    with open(path) as handle:
        text = handle.read()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(path, os.X_OK), f"{name} is not executable"


@pytest.mark.parametrize("name,variable", [
    (name, variable) for name, (required, _) in sorted(SCRIPTS.items())
    for variable in required])
def test_script_names_a_missing_required_variable(name, variable, fake_bin):
    env = {k: v for k, v in SCRIPTS[name][0].items() if k != variable}
    result = run_script(name, env, fake_bin)
    assert result.returncode != 0
    assert variable in result.stderr
    assert result.stdout == "", "imgclass must not start"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_with_only_path_fails_before_work(name, fake_bin):
    result = run_script(name, {}, fake_bin)
    assert result.returncode != 0
    assert any(v in result.stderr for v in SCRIPTS[name][0])
    assert result.stdout == ""


@pytest.mark.parametrize("name", sorted(SCRIPTS))
@pytest.mark.parametrize("optional", [False, True],
                         ids=["required-only", "all-optional"])
def test_script_options_are_known_to_imgclass_and_beam(name, optional,
                                                       fake_bin):
    required, extra = SCRIPTS[name]
    env = {**required, **(extra if optional else {})}
    result = run_script(name, env, fake_bin)
    assert result.returncode == 0, result.stderr
    args, options = check_classify_argv(result.stdout.splitlines())
    assert args.input == env["INPUT"].split()
    assert args.output == env["OUTPUT"]
    assert args.store == env.get("STORE")
    assert args.model == env.get("MODEL", "digits-cnn@prod")
    if "MODEL" not in env:
        assert_pinned_alias(args.model)
    assert args.overwrite == (env.get("OVERWRITE") == "1")
    assert args.skip_done == (env.get("SKIP_DONE") == "1")
    if "RUN_DATE" in env:
        assert args.run_date == env["RUN_DATE"]
    else:
        assert args.run_date in today_utc()
    runner = options.view_as(StandardOptions).runner
    portable = options.view_as(PortableOptions)
    if name == "run-dataflow.sh":
        assert runner == "DataflowRunner"
        gcp = options.view_as(GoogleCloudOptions)
        assert (gcp.project, gcp.region, gcp.temp_location) == (
            env["PROJECT"], env["REGION"], env["TEMP_LOCATION"])
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", gcp.job_name), \
            f"invalid Dataflow job name {gcp.job_name!r}"
        workers = options.view_as(WorkerOptions)
        assert workers.sdk_container_image == IMAGE
        assert workers.max_num_workers == int(env["MAX_NUM_WORKERS"])
        if optional:
            assert workers.num_workers == int(env["NUM_WORKERS"])
            assert workers.machine_type == env["MACHINE_TYPE"]
        assert options.view_as(SetupOptions).sdk_location == "container"
        assert "use_runner_v2" in options.view_as(DebugOptions).experiments
    else:
        assert runner == ("FlinkRunner" if name == "run-flink.sh"
                          else "SparkRunner")
        assert portable.environment_type == "DOCKER"
        assert portable.environment_config == IMAGE
    if name == "run-flink.sh":
        flink = options.get_all_options()
        assert flink["flink_master"] == env["FLINK_MASTER"]
        assert flink["flink_version"] == env["FLINK_VERSION"]
        if optional:
            assert flink["parallelism"] == int(env["PARALLELISM"])
            assert flink["flink_submit_uber_jar"] is True
    if name == "run-spark.sh":
        spark = options.get_all_options()
        assert spark["spark_master_url"] == env["SPARK_MASTER_URL"]
        if optional:
            assert spark["spark_submit_uber_jar"] is True
            assert spark["spark_rest_url"] == env["SPARK_REST_URL"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_dry_run_prints_the_same_command(name, fake_bin):
    env = {**SCRIPTS[name][0], "RUN_DATE": "2026-11-26",
           "JOB_NAME": "imgclass-test"}
    ran = run_script(name, env, fake_bin, "--job_endpoint=x:1")
    dry = run_script(name, {**env, "DRY_RUN": "1"}, fake_bin,
                     "--job_endpoint=x:1")
    assert ran.returncode == dry.returncode == 0, ran.stderr + dry.stderr
    assert shlex.split(dry.stdout) == ["imgclass", *ran.stdout.splitlines()]
    assert ran.stdout.splitlines()[-1] == "--job_endpoint=x:1"


@pytest.mark.parametrize("name", ["run-flink.sh", "run-spark.sh"])
def test_portable_scripts_can_use_a_worker_pool(name, fake_bin):
    env = {k: v for k, v in SCRIPTS[name][0].items() if k != "IMAGE"}
    result = run_script(name, {**env, "ENVIRONMENT_TYPE": "EXTERNAL"},
                        fake_bin)
    assert result.returncode == 0, result.stderr
    _, options = check_classify_argv(result.stdout.splitlines())
    portable = options.view_as(PortableOptions)
    assert portable.environment_type == "EXTERNAL"
    assert portable.environment_config == "localhost:50000"

    wrong = run_script(name, {**env, "ENVIRONMENT_TYPE": "LOOPBACK"},
                       fake_bin)
    assert wrong.returncode != 0 and "ENVIRONMENT_TYPE" in wrong.stderr


@pytest.mark.parametrize("name", sorted(SCRIPTS))
@pytest.mark.parametrize("dry_run", ["0", "1"])
def test_script_refuses_skip_done_with_overwrite(name, dry_run, fake_bin):
    env = {**SCRIPTS[name][0], "SKIP_DONE": "1", "OVERWRITE": "1",
           "DRY_RUN": dry_run}
    result = run_script(name, env, fake_bin)
    assert result.returncode == 2
    assert result.stdout == "", "imgclass must not start"
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{name}: ")
    assert "SKIP_DONE=1" in line and "OVERWRITE=1" in line
    assert "cannot be combined" in line


@pytest.mark.parametrize("name", sorted(SCRIPTS))
@pytest.mark.parametrize("variable", ["SKIP_DONE", "OVERWRITE"])
def test_script_refuses_a_flag_that_is_not_0_or_1(name, variable, fake_bin):
    env = {**SCRIPTS[name][0], variable: "yes"}
    result = run_script(name, env, fake_bin)
    assert result.returncode == 2
    assert result.stdout == ""
    assert variable in result.stderr and "'yes'" in result.stderr


@pytest.mark.parametrize("name", sorted(SCRIPTS))
@pytest.mark.parametrize("flags,skip_done,overwrite", [
    ({}, False, False), ({"SKIP_DONE": "0", "OVERWRITE": ""}, False, False),
    ({"SKIP_DONE": "1", "OVERWRITE": "0"}, True, False),
    ({"SKIP_DONE": "", "OVERWRITE": "1"}, False, True)])
def test_script_passes_skip_done_or_overwrite(name, flags, skip_done,
                                              overwrite, fake_bin):
    result = run_script(name, {**SCRIPTS[name][0], **flags}, fake_bin)
    assert result.returncode == 0, result.stderr
    args, _ = check_classify_argv(result.stdout.splitlines())
    assert (args.skip_done, args.overwrite) == (skip_done, overwrite)
    assert args.output == SCRIPTS[name][0]["OUTPUT"]


def test_dataflow_script_refuses_local_paths(fake_bin):
    env = dict(SCRIPTS["run-dataflow.sh"][0], OUTPUT="/data/out")
    result = run_script("run-dataflow.sh", env, fake_bin)
    assert result.returncode != 0 and "OUTPUT" in result.stderr
    assert result.stdout == ""


# Worker image -----------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    with open(os.path.join(DEPLOY, "Dockerfile")) as handle:
        lines = [line.rstrip("\n") for line in handle
                 if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    found = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def dockerfile_env() -> dict[str, str]:
    env = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_image_is_the_beam_sdk_image_of_the_installed_beam_and_python():
    froms = [rest for keyword, rest in dockerfile_instructions()
             if keyword == "FROM"]
    assert len(froms) == 1
    match = re.fullmatch(r"apache/beam_python(\d+\.\d+)_sdk:(\S+)", froms[0])
    assert match, froms[0]
    python, beam = match.groups()
    assert beam == apache_beam.__version__
    assert python == "3.11" == f"{sys.version_info[0]}.{sys.version_info[1]}"


def test_image_installs_gxx_the_project_and_keeps_beam_and_the_entrypoint():
    instructions = dockerfile_instructions()
    runs = " && ".join(rest for keyword, rest in instructions
                       if keyword == "RUN")
    assert re.search(r"apt-get install [^&]*\bg\+\+", runs)
    assert "pip install --no-cache-dir --constraint" in runs
    assert "'apache-beam==' + apache_beam.__version__" in runs
    copied = " ".join(rest for keyword, rest in instructions
                      if keyword == "COPY")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        pyproject = tomllib.load(handle)
    packages = pyproject["tool"]["setuptools"].get("packages")
    if not isinstance(packages, list):  # [tool.setuptools.packages.find]
        packages = packages["find"]["include"]
    needed = {"pyproject.toml", pyproject["project"].get("readme")}
    needed |= {package.split(".")[0] for package in packages}
    for package in sorted(needed - {None}):
        assert re.search(rf"(^|\s){re.escape(package)}\s", copied), \
            f"{package} is not copied into the image"
    entrypoints = [rest for keyword, rest in instructions
                   if keyword == "ENTRYPOINT"]
    assert [json.loads(e) for e in entrypoints] == [["/opt/apache/beam/boot"]]


def warm_command() -> str:
    runs = [rest for keyword, rest in dockerfile_instructions()
            if keyword == "RUN" and "compile_predictor" in rest]
    assert len(runs) == 1, "one RUN must warm the Theano compile cache"
    match = re.search(r'python -c "([^"]*compile_predictor[^"]*)"', runs[0])
    assert match and "load_model('digits-cnn')" in match.group(1)
    return match.group(1)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="the image's Theano flags target x86-64")
def test_image_warm_cache_is_found_by_a_later_process(tmp_path):
    """Runs the Dockerfile's warm-up with its ENV (cache folder moved into
    tmp_path): a second process, as a worker would be, compiles nothing."""
    image_env = dockerfile_env()
    assert os.path.isabs(image_env["XDG_CACHE_HOME"])
    env = {**os.environ, **image_env, "XDG_CACHE_HOME": str(tmp_path)}
    code = warm_command() + "; import theano; print(theano.config.compiledir)"

    def warm():
        result = subprocess.run([sys.executable, "-c", code], env=env,
                                cwd=tmp_path, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    def modules():
        return sorted(str(p) for p in tmp_path.rglob("*.so"))

    compiledir = warm()
    assert compiledir.startswith(str(tmp_path / "imgclass" / "theano"))
    # Theano's default name holds the platform and host kernel version.
    assert platform.system() not in os.path.basename(compiledir)
    first = modules()
    assert first, "the warm-up compiled nothing"
    assert warm() == compiledir
    assert modules() == first, "a later process compiled again"


# Schedules --------------------------------------------------------------------

CRON_OUTPUT_ROOT = "gs://bucket/imgclass"
CRON_LOCK = "/var/lock/imgclass.lock"


def crontab_jobs() -> list[tuple[bool, str]]:
    """(commented out, command) of every job line of the crontab."""
    with open(os.path.join(SCHEDULES, "crontab")) as handle:
        lines = handle.read().splitlines()
    jobs = []
    for line in lines:
        stripped = line.lstrip("# ")
        fields = stripped.split(None, 5)
        if len(fields) == 6 and all(re.fullmatch(r"[\d*/,-]+", f)
                                    for f in fields[:5]):
            jobs.append((line.startswith("#"), fields[5]))
    return jobs


def cron_command(command: str, moves: dict[str, str]) -> str:
    """A crontab command as cron runs it (\\% is %), its paths moved."""
    command = command.replace(r"\%", "%")
    for old, new in moves.items():
        command = command.replace(old, new)
    return command


def cron_dataflow_moves(tmp_path) -> dict[str, str]:
    """Writes the env file of the Dataflow line into tmp_path; returns the
    moves of the crontab's paths into tmp_path."""
    env_file = tmp_path / "dataflow.env"
    env_file.write_text("".join(
        f"{k}={shlex.quote(v)}\n" for k, v in SCRIPTS["run-dataflow.sh"][0].items()
        if k != "OUTPUT") + f"OUTPUT_ROOT={CRON_OUTPUT_ROOT}\n")
    return {"/etc/imgclass/dataflow.env": str(env_file),
            "/opt/imgclass/deploy": DEPLOY,
            "/var/log/imgclass": str(tmp_path), "/var/lock": str(tmp_path)}


def test_crontab_escapes_percent_and_runs_the_dataflow_script(tmp_path,
                                                              fake_bin):
    jobs = crontab_jobs()
    active = [command for commented, command in jobs if not commented]
    assert len(active) == 1 and "deploy/run-dataflow.sh" in active[0]
    assert len(jobs) == 2
    for _, command in jobs:
        assert not re.search(r"(?<!\\)%", command), \
            f"unescaped % in crontab command: {command}"
        assert r"date -u +\%F" in command
        # Every line takes the same lock: never two runs on one output.
        assert f"flock -n {CRON_LOCK} " in command
        subprocess.run(["bash", "-n", "-c", command.replace(r"\%", "%")],
                       check=True)

    # Run each command as cron would, its paths moved into tmp_path.
    moves = cron_dataflow_moves(tmp_path)
    roots = {True: "/data/imgclass", False: CRON_OUTPUT_ROOT}
    for commented, command in jobs:
        result = run_bash(["-c", cron_command(command, moves)], {}, fake_bin)
        assert result.returncode == 0, result.stderr
        [log] = tmp_path.glob("*.log")
        args, _ = check_classify_argv(log.read_text().splitlines())
        log.unlink()
        assert args.run_date in today_utc()
        # One output root for every night, added to with --skip-done.
        assert args.output == roots[commented]
        assert args.skip_done and not args.overwrite


def test_crontab_skips_the_night_while_a_run_holds_the_lock(tmp_path,
                                                            fake_bin):
    [command] = [c for commented, c in crontab_jobs() if not commented]
    command = cron_command(command, cron_dataflow_moves(tmp_path))
    with open(tmp_path / "imgclass.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the previous night, still going
        result = run_bash(["-c", command], {}, fake_bin)
    assert result.returncode != 0
    [log] = tmp_path.glob("*.log")
    assert "classify" not in log.read_text(), "imgclass must not start"


def test_crontab_local_line_adds_only_new_files_to_one_output(tmp_path,
                                                              split):
    """The crontab's local-machine line, run for real three times into one
    output root: the first night classifies everything, a rerun adds
    nothing, and a later run classifies only the files that arrived."""
    imgclass = os.path.join(os.path.dirname(sys.executable), "imgclass")
    if not os.access(imgclass, os.X_OK):
        pytest.skip(f"no imgclass command next to {sys.executable}")
    [command] = [c for commented, c in crontab_jobs() if commented]
    incoming, output = tmp_path / "incoming", tmp_path / "imgclass"
    command = cron_command(command, {
        "/data/incoming": str(incoming), "/data/imgclass": str(output),
        "/var/log/imgclass": str(tmp_path), "/var/lock": str(tmp_path)})
    bin_dir = os.path.dirname(imgclass)

    def night() -> dict:
        # cron's bare environment, but the suite's compile cache (conftest)
        result = run_bash(["-c", command], {
            "XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]}, bin_dir)
        logs = "".join(p.read_text() for p in tmp_path.glob("*.log"))
        assert result.returncode == 0, logs
        with open(output / "_manifest.json") as handle:
            return json.load(handle)

    first = write_digits(str(incoming / "n1"), split, 6, seed=1)
    counts = night()["counts"]
    assert (counts["matched"], counts["predicted"], counts["skipped"]) == (
        6, 6, 0)
    counts = night()["counts"]  # a rerun of the same night
    assert (counts["matched"], counts["predicted"], counts["skipped"]) == (
        6, 0, 6)
    later = write_digits(str(incoming / "n2"), split, 3, seed=2)
    manifest = night()
    counts = manifest["counts"]
    assert (counts["matched"], counts["predicted"], counts["skipped"]) == (
        9, 3, 6)

    [partition] = os.listdir(output / "predictions")
    assert partition == manifest["partition"]
    assert partition.startswith("run_date=")
    assert partition[len("run_date="):] in today_utc()
    paths = pq.read_table(output / "predictions").column("path").to_pylist()
    assert sorted(paths) == sorted({**first, **later})
    assert len(os.listdir(output / "_runs")) == 3


def test_cronjob_is_a_forbid_concurrency_cronjob_of_the_image(fake_bin):
    with open(os.path.join(SCHEDULES, "cronjob.yaml")) as handle:
        cronjob = yaml.safe_load(handle)
    assert cronjob["apiVersion"] == "batch/v1"
    assert cronjob["kind"] == "CronJob"
    spec = cronjob["spec"]
    assert len(spec["schedule"].split()) == 5
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    [container] = pod["containers"]
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["IMAGE"] == container["image"], \
        "the workers must run the launcher's image"

    # Run the container's command with the stand-in imgclass.
    assert container["command"][:2] == ["/bin/bash", "-c"]
    [script] = container["args"]
    env["MAX_NUM_WORKERS"] = "20"  # a placeholder in the file
    result = run_bash(["-c", script], env, fake_bin)
    assert result.returncode == 0, result.stderr
    args, options = check_classify_argv(result.stdout.splitlines())
    assert args.run_date in today_utc()
    # One output root for every night, added to with --skip-done.
    assert args.output == env["OUTPUT_ROOT"]
    assert args.skip_done and not args.overwrite
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(WorkerOptions).sdk_container_image == env["IMAGE"]
    assert options.view_as(SetupOptions).sdk_location == "container"
    assert_pinned_alias(args.model)


def assert_pinned_alias(model: str) -> None:
    """A schedule names an alias that the shipped store resolves, not
    ``latest``: training a new version must not change what it runs."""
    from model_store.store import read_aliases, resolve

    name, _, alias = model.partition("@")
    assert alias and not alias.isdigit() and alias != "latest", model
    assert alias in read_aliases(name)
    assert resolve(model).version == read_aliases(name)[alias]


def render(value: str, ds: str = "2026-11-26") -> str:
    """Stands in for Airflow's Jinja rendering of the DAG's settings."""
    def one(match):
        name = match.group(1)
        if name == "ds":
            return ds
        if name.endswith("max_num_workers"):
            return "20"
        if name.endswith(("_input", "_output_root", "_temp_location")):
            return f"gs://bucket/{name.rsplit('.', 1)[-1]}"
        return name.rsplit(".", 1)[-1]
    return re.sub(r"\{\{\s*(\S+)\s*\}\}", one, value)


def test_airflow_dag_compiles_and_runs_the_launch_script(fake_bin):
    path = os.path.join(SCHEDULES, "airflow_dag.py")
    with open(path) as handle:
        source = handle.read()
    tree = ast.parse(compile(source, path, "exec", flags=ast.PyCF_ONLY_AST))
    constants = {node.targets[0].id: ast.literal_eval(node.value)
                 for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.targets[0], ast.Name)
                 and node.targets[0].id in ("BASH_COMMAND", "ENV")}
    command = constants["BASH_COMMAND"]
    # Airflow would take a command ending like this for a template file name.
    assert not command.endswith((".sh", ".bash"))
    assert "/deploy/run-dataflow.sh" in command
    assert "max_active_runs=1" in source

    # Run the task's command as the BashOperator would, with the stand-in,
    # for two dates: both go to the one output root, with --skip-done.
    command = re.sub(r"/\S*/deploy/", DEPLOY + "/", command)
    for ds in ("2026-11-26", "2026-11-27"):
        env = {key: render(value, ds)
               for key, value in constants["ENV"].items()}
        env["IMGCLASS"] = os.path.join(fake_bin, "imgclass")
        result = run_bash(["-c", command], env, fake_bin)
        assert result.returncode == 0, result.stderr
        args, options = check_classify_argv(result.stdout.splitlines())
        assert args.run_date == ds
        assert args.skip_done and not args.overwrite
        assert args.output == "gs://bucket/imgclass_output_root"
        assert options.view_as(StandardOptions).runner == "DataflowRunner"


def test_airflow_dag_imports_and_defines_one_dag():
    pytest.importorskip(
        "airflow", reason="Airflow is not installed here (deliberately not a "
                          "dependency of imgclass)")
    try:
        from airflow.providers.standard.operators.bash import BashOperator
        from airflow.sdk import DAG
    except ImportError:
        from airflow import DAG
        from airflow.operators.bash import BashOperator
    path = os.path.join(SCHEDULES, "airflow_dag.py")
    spec = importlib.util.spec_from_file_location("imgclass_airflow_dag",
                                                  path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dags = [v for v in vars(module).values() if isinstance(v, DAG)]
    assert len(dags) == 1
    [task] = dags[0].tasks
    assert isinstance(task, BashOperator)
    assert task.append_env


def test_an_installed_copy_holds_every_file_the_code_reads(tmp_path):
    """What ``pip install .`` (the worker image) copies from a clean source
    tree: every file of the project's packages, the C sources Theano
    compiles included. The resizing kernel's source was left out, so
    installed workers warned and resized with Pillow on every run."""
    import shutil

    packages = ("pipeline", "transforms", "model_store")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    for package in packages:  # no egg-info: what setuptools decides alone
        shutil.copytree(os.path.join(ROOT, package), source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q",
         "build_py", "-d", str(tmp_path / "built")], cwd=source,
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    missing = []
    for package in packages:
        for folder, _, files in os.walk(source / package):
            for name in files:
                path = os.path.relpath(os.path.join(folder, name), source)
                if not (tmp_path / "built" / path).exists():
                    missing.append(path)
    assert missing == []
