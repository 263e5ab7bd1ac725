"""Pipeline assembly and the imgclass command line."""


def command() -> None:
    """The ``imgclass`` command (``pipeline.cli.run``). The command line is
    imported here, so that a Ctrl-C while it loads is one line too."""
    import sys

    try:
        from pipeline import cli
    except KeyboardInterrupt:
        sys.stderr.write("imgclass: interrupted\n")
        sys.exit(130)
    cli.run()
