"""The ``imgclass`` command starts without garbage collections and turns
them back on (``pipeline.collection``): while a run is built they are off,
while it runs and for every other command they are on, and a failed start
leaves them on. Each check runs in a fresh interpreter, as the command
does (a freeze cannot be undone)."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(body: str) -> None:
    script = textwrap.dedent("""
        import gc, sys
        from pipeline import cli, collection
        collection.pause()
        assert not gc.isenabled()
    """) + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_run_is_built_without_collections_and_runs_with_them(tmp_path):
    run_script(f"""
        import pipeline.run as run
        seen = {{}}
        build, wait = run._build, run._wait
        def spy_build(*args, **kwargs):
            seen["building"] = gc.isenabled()
            return build(*args, **kwargs)
        def spy_wait(*args, **kwargs):
            seen["running"] = gc.isenabled()
            seen["frozen"] = gc.get_freeze_count()
            return wait(*args, **kwargs)
        run._build, run._wait = spy_build, spy_wait
        code = cli.main(["classify", "--input", "samples/digits",
                         "--output", {str(tmp_path / "out")!r}, "-q"])
        assert code == 0, code
        assert seen["building"] is False, seen
        assert seen["running"] is True, seen
        # What start-up made (Beam, Theano, the model) is out of the
        # collections from then on.
        assert seen["frozen"] > 100_000, seen
        assert gc.isenabled()

        # A second run in the same process (a watch window) freezes nothing
        # more: the garbage of the first would be kept for ever. (Frozen
        # objects that die leave the count: it may only shrink.)
        collection.pause()
        code = cli.main(["classify", "--input", "samples/digits",
                         "--output", {str(tmp_path / "again")!r}, "-q"])
        assert code == 0, code
        assert gc.get_freeze_count() <= seen["frozen"], (
            gc.get_freeze_count(), seen)
        assert gc.isenabled()
    """)


def test_commands_that_run_no_pipeline_and_failed_starts_collect(tmp_path):
    run_script(f"""
        seen = {{}}
        def spy(args):
            seen["enabled"] = gc.isenabled()
            return 0
        cli._models_list = spy
        assert cli.main(["models", "list"]) == 0
        assert seen["enabled"] is True, seen
        assert gc.isenabled()

        # A configuration mistake stops classify before its pipeline is
        # built: collections are on again when main returns.
        collection.pause()
        code = cli.main(["classify", "--input", {str(tmp_path / "none")!r},
                         "--output", {str(tmp_path / "out")!r}, "-q"])
        assert code == 2, code
        assert gc.isenabled()
    """)


def test_library_code_is_left_as_it_was():
    """Without :func:`pause` (imgclass imported as a library), resuming
    neither freezes nor turns on a collector its caller turned off."""
    script = textwrap.dedent("""
        import gc
        from pipeline import collection
        gc.disable()
        collection.resume()
        assert not gc.isenabled()
        assert gc.get_freeze_count() == 0
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_local_worker_starts_without_collections_then_collects():
    """A worker process of the local runner (``pipeline.worker``) has no
    moment its harness announces as the end of start-up: collections
    resume, with start-up's objects frozen, once its timer has run."""
    script = textwrap.dedent("""
        import gc, time
        from apache_beam.runners.worker import sdk_worker_main
        from pipeline import worker
        seen = {}
        def harness(argv):
            seen["starting"] = gc.isenabled()
            deadline = time.monotonic() + 60
            while not gc.isenabled() and time.monotonic() < deadline:
                time.sleep(0.01)
            seen["later"] = gc.isenabled()
            seen["frozen"] = gc.get_freeze_count()
        sdk_worker_main.main = harness
        worker.WORKER_STARTUP_SECONDS = 0.2
        assert worker.main(["worker"]) == 0
        assert seen["starting"] is False, seen
        assert seen["later"] is True, seen
        assert seen["frozen"] > 10_000, seen
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
