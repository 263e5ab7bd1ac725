"""The local runner's worker processes (``--direct_running_mode=
multi_processing``): Beam's SDK harness, started with the command's logging
(``pipeline/logs.py``). Ctrl-C is the command's to handle: it stops its
workers and says so once."""

from __future__ import annotations

import shlex
import signal
import sys

from pipeline import logs

# How the runner starts a worker (Beam's own: ``-m
# apache_beam.runners.worker.sdk_worker_main``).
COMMAND = f"{shlex.quote(sys.executable)} -m pipeline.worker"


def local_runner(**kwargs):
    """Beam's in-process ``FnApiRunner`` whose worker processes, if any,
    start with :data:`COMMAND`."""
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.transforms import environments

    class FnApiRunner(fn_runner.FnApiRunner):  # the name runs report
        @property
        def _default_environment(self):
            return self._environment

        @_default_environment.setter
        def _default_environment(self, environment):
            if isinstance(environment,
                          environments.SubprocessSDKEnvironment):
                environment = environments.SubprocessSDKEnvironment \
                    .from_command_string(COMMAND)
            self._environment = environment

    return FnApiRunner(**kwargs)


def main(argv) -> int:
    # A terminal sends Ctrl-C to every process of the job.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.configure()
    from apache_beam.runners.worker import sdk_worker_main

    try:
        sdk_worker_main.main(argv)
    except Exception as error:  # noqa: BLE001
        if logs.is_stop(error):  # the command is gone: it has said why
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
