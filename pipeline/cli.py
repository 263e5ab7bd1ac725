"""The ``imgclass`` command line.

Exit codes: 0 success; 1 a check failed (``models verify``) or the run
failed; 2 a usage or configuration mistake, reported in one line before any
work starts; 130 Ctrl-C (SIGINT), 143 SIGTERM: ``classify`` publishes
nothing then.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time

from model_store import DEFAULT_MODEL
from model_store.errors import ConfigError, ImgclassError
from transforms.files import DEFAULT_MAX_FILE_BYTES

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM


def _models_list(args) -> int:
    from model_store.store import list_models, load_model, store_root

    infos = list_models(args.store)
    if args.json:
        for info in infos:
            print(json.dumps(_listing(info, args.store)))
        return EXIT_OK
    if not infos:
        print(f"no models in {store_root(args.store)}")
        return EXIT_OK
    print(f"{'MODEL':<24} {'VERSION':>7}  {'ACCURACY':>8}  CREATED")
    for info in infos:
        try:
            meta = load_model(info.ref, root=args.store).metadata
            accuracy = meta.get("metrics", {}).get("accuracy")
            accuracy = f"{accuracy:.4f}" if accuracy is not None else "-"
            created = meta.get("created_at", "-")
        except ImgclassError as error:
            accuracy, created = "BROKEN", str(error).split(":")[0]
        print(f"{info.name:<24} {info.version:>7}  {accuracy:>8}  {created}")
    return EXIT_OK


def _listing(info, store) -> dict:
    """One version as ``models list --json`` prints it."""
    from model_store.store import load_model

    row = {"name": info.name, "version": info.version,
           "location": info.location}
    try:
        meta = load_model(info.ref, root=store).metadata
    except ImgclassError as error:
        return dict(row, ok=False, error=str(error))
    return dict(row, ok=True, accuracy=meta.get("metrics", {}).get(
        "accuracy"), created_at=meta.get("created_at"),
        classes=len(meta["class_names"]))


def _models_show(args) -> int:
    from model_store import layers as L
    from model_store.store import load_model

    model = load_model(args.model, root=args.store)
    network = model.build()
    layers = [{"name": layer.name, "type": type(layer).__name__,
               "output_shape": list(layer.output_shape),
               "params": {p.name.split(".")[1]: list(
                   p.get_value(borrow=True).shape) for p in layer.params}}
              for layer in L.get_all_layers(network)]
    if args.json:
        print(json.dumps({"ref": model.ref, "location": model.location,
                          "metadata": model.metadata, "layers": layers,
                          "flops_per_image": L.count_flops(network)}))
        return EXIT_OK
    print(f"{model.ref}  ({model.location})")
    meta = model.metadata
    for key in ("description", "created_at", "input_shape", "color_mode",
                "resize", "normalization", "background", "class_names",
                "metrics", "weights_sha256"):
        if key in meta:
            print(f"  {key}: {json.dumps(meta[key])}")
    training = meta.get("training", {})
    if training:
        print(f"  training: {json.dumps({k: v for k, v in training.items() if k != 'history'})}")
    print("  layers:")
    for layer in layers:
        params = ", ".join(f"{name}{tuple(shape)}"
                           for name, shape in layer["params"].items())
        print(f"    {layer['name']:<8} {layer['type']:<15} -> "
              f"{tuple(layer['output_shape'])} {params}")
    print(f"  forward pass: {L.count_flops(network) / 1e6:.2f} MFLOP per image")
    return EXIT_OK


def _models_verify(args) -> int:
    from model_store.store import verify

    results = verify(args.model, root=args.store)
    if not results:
        print("no models to verify")
    failed = 0
    for ref, error in results:
        if error is None:
            print(f"ok      {ref}")
        else:
            failed += 1
            print(f"FAILED  {ref}: {error}")
    return EXIT_FAILED if failed else EXIT_OK


def _train(args) -> int:
    import os

    from model_store.train import SPECS_DIR, TrainConfig, train_model

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, seed=args.seed, optimizer=args.optimizer,
                         augment_copies=args.augment_copies)
    spec = args.spec or os.path.join(SPECS_DIR, "digits-cnn.json")
    model = train_model(dataset=args.dataset, name=args.name, spec_path=spec,
                        config=config, root=args.store)
    print(f"saved {model.ref} to {model.location}: held-out accuracy "
          f"{model.metadata['metrics']['accuracy']:.4f} "
          f"(n={model.metadata['metrics']['n_test']})")
    return EXIT_OK


def _evaluate(args) -> int:
    from model_store.datasets import load_digits_split
    from model_store.evaluate import evaluate_on_split, plot_confusion
    from model_store.store import load_model

    model = load_model(args.model, root=args.store)
    metrics = evaluate_on_split(model, load_digits_split())
    if args.plot:
        plot_confusion(metrics, args.plot)
    if args.json:
        print(json.dumps(metrics))
        return EXIT_OK
    print(f"{model.ref}: accuracy {metrics['accuracy']:.4f} on "
          f"{metrics['n_test']} held-out digits")
    print(f"{'class':>6} {'precision':>9} {'recall':>7} {'support':>7}")
    for name, row in metrics["per_class"].items():
        print(f"{name:>6} {row['precision']:>9.4f} {row['recall']:>7.4f} "
              f"{row['support']:>7}")
    print("confusion matrix (rows: true class, columns: predicted):")
    for name, row in zip(metrics["per_class"], metrics["confusion_matrix"]):
        print(f"{name:>6} " + " ".join(f"{c:>4}" for c in row))
    if args.plot:
        print(f"wrote {args.plot}")
    return EXIT_OK


_IMPORTED = time.monotonic()


def process_started() -> float:
    """When this process started, on the ``time.monotonic()`` clock (from
    /proc on Linux, else when this module was imported): the summary's wall
    time counts Python's start, imports, model loading and compiling."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        age = uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED
    # Both clocks count from boot on Linux; keep it sane if they do not.
    return min(_IMPORTED, time.monotonic() - max(age, 0.0))


def _classify(args) -> int:
    from pipeline.run import ClassifyConfig, RunFailed, run_classify, summary

    config = ClassifyConfig(
        inputs=args.input, output=args.output, model=args.model,
        store=args.store, top_k=args.top_k, batch_size=args.batch_size,
        max_pixels=args.max_pixels, max_file_bytes=args.max_file_bytes,
        partition_by=args.partition_by,
        run_date=args.run_date, overwrite=args.overwrite,
        skip_done=args.skip_done, skip_done_by=args.skip_done_by,
        min_confidence=args.min_confidence, retry_errors=args.retry_errors,
        allow_empty=args.allow_empty, beam_args=args.beam_args)
    with _sigterm_interrupts() as terminated:
        try:
            manifest = run_classify(config, log=_log(args),
                                    started=process_started())
        except RunFailed as error:
            print(f"imgclass: run failed: {error}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt as error:
            print(f"imgclass: interrupted: {str(error) or 'nothing published'}",
                  file=sys.stderr)
            return EXIT_SIGTERM if terminated else EXIT_SIGINT
    if args.summary_json:
        print(json.dumps(summary(manifest)), flush=True)
    return EXIT_OK


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM stops a run as Ctrl-C does (staging removed, lock released);
    yields a list that is non-empty once SIGTERM arrived."""
    received = []

    def handler(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _watch(args) -> int:
    from pipeline.run import ClassifyConfig, RunFailed
    from pipeline.watch import stop_on_signals, watch

    config = ClassifyConfig(
        inputs=args.input, output=args.output, model=args.model,
        store=args.store, top_k=args.top_k, batch_size=args.batch_size,
        max_pixels=args.max_pixels, max_file_bytes=args.max_file_bytes,
        min_confidence=args.min_confidence,
        beam_args=args.beam_args)
    with stop_on_signals(threading.Event()) as stop:
        try:
            watch(config, interval=args.interval, window=args.window,
                  settle=args.settle, stop_event=stop, log=_log(args))
        except RunFailed as error:
            print(f"imgclass: watch failed: {error}", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {value}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a probability from 0 to 1, got {text!r}")
    return value


def _log(args):
    """Where run messages go: stderr, or nowhere with -q."""
    return open(os.devnull, "w") if args.quiet else sys.stderr


def _version() -> str:
    from importlib import metadata

    from model_store.store import resolve
    try:
        default = resolve(DEFAULT_MODEL).ref
    except ImgclassError:
        default = f"{DEFAULT_MODEL} (not found)"
    return (f"imgclass {metadata.version('imgclass')} (Apache Beam "
            f"{metadata.version('apache-beam')}, Theano "
            f"{metadata.version('theano')}, Python "
            f"{sys.version.split()[0]}; default model {default})")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive number, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """Reports a usage mistake in one line (exit code 2), not a usage block."""

    def error(self, message):
        raise ConfigError(f"{message} (see '{self.prog} --help')")


def _add_model_options(parser, model_help: str) -> None:
    """The options ``classify`` and ``watch`` share."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        metavar="NAME[@VERSION]|PATH",
                        help=f"{model_help} (default: %(default)s)")
    parser.add_argument("--top-k", type=_positive_int, default=5,
                        metavar="K",
                        help="best classes listed per row (default: "
                             "%(default)s)")
    parser.add_argument("--batch-size", type=_positive_int, default=256,
                        help="files per batch: read and decoded together, "
                             "one Theano call (default: %(default)s)")
    parser.add_argument("--max-pixels", type=_positive_int,
                        default=50_000_000,
                        help="larger images become error rows, a guard "
                             "against decompression bombs (default: "
                             "%(default)s)")
    parser.add_argument("--max-file-bytes", type=_positive_int,
                        default=DEFAULT_MAX_FILE_BYTES, metavar="N",
                        help="larger files become error rows without being "
                             "read whole (default: %(default)s)")
    parser.add_argument("--min-confidence", type=_probability, default=0.0,
                        metavar="P",
                        help="rows whose best probability is below P get a "
                             "null label (top-k is kept), so that queries "
                             "can tell 'unsure' from a label (default: "
                             "%(default)s, every row labelled)")


def _add_common_options(parser, default) -> None:
    """Options accepted before and after the command. Their defaults are
    set once, on the top-level parser (``build_parser``); here ``default``
    is SUPPRESS, so that an option given before the command is not reset by
    the command's parser."""
    parser.add_argument(
        "--store", metavar="DIR", default=default,
        help="model store root, a local folder or any Beam filesystem path "
             "(default: $IMGCLASS_MODEL_STORE, else the models shipped "
             "in model_store/models)")
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="print only errors (and --summary-json)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        default=default,
                        help="also show Beam's own log lines")


class _VersionAction(argparse.Action):
    """``--version``, worked out only when asked for."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


class _CommandParser(_Parser):
    """A command's parser: also takes the common options."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _add_common_options(self, argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="imgclass",
        description="Classify image files in bulk with Apache Beam and a "
                    "compiled Theano network; manage, train and evaluate the "
                    "models.")
    parser.add_argument("--version", action=_VersionAction,
                        help="print the versions of imgclass, Beam, Theano, "
                             "Python and the default model, and exit")
    _add_common_options(parser, argparse.SUPPRESS)
    parser.set_defaults(store=None, quiet=False, verbose=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     required=True,
                                     parser_class=_CommandParser)

    models = commands.add_parser(
        "models", help="list, show and verify stored models",
        description="List, show and verify the models in the store.")
    models_commands = models.add_subparsers(dest="models_command",
                                            metavar="ACTION", required=True,
                                            parser_class=_CommandParser)
    listing = models_commands.add_parser(
        "list", help="every stored model version",
        description="List every stored model version with its accuracy.")
    listing.add_argument("--json", action="store_true",
                         help="print one JSON object per version, one a line")
    listing.set_defaults(func=_models_list)
    show = models_commands.add_parser(
        "show", help="one version's metadata and layers",
        description="Show a model version's metadata, layers and shapes.")
    show.add_argument("model", metavar="NAME[@VERSION]",
                      help="e.g. digits-cnn, digits-cnn@1 or a folder path")
    show.add_argument("--json", action="store_true",
                      help="print the metadata and layers as one JSON object")
    show.set_defaults(func=_models_show)
    check = models_commands.add_parser(
        "verify", help="check checksums and weight shapes",
        description="Verify weights checksums and shapes against the spec. "
                    "Exit 0 when every checked model is intact, 1 otherwise.")
    check.add_argument("model", metavar="NAME[@VERSION]", nargs="?",
                       help="one model (default: every stored version)")
    check.set_defaults(func=_models_verify)

    train = commands.add_parser(
        "train", help="train a model and save a new version",
        description="Train a network from a JSON spec with theano.grad and "
                    "save it as a new version in the store. Deterministic "
                    "for a given seed.")
    train.add_argument("--dataset", required=True, choices=["digits"],
                       help="training data: the UCI handwritten digits that "
                            "scikit-learn ships")
    train.add_argument("--name", required=True,
                       help="model name; the version is the next free one")
    train.add_argument("--spec", metavar="PATH",
                       help="JSON network spec (default: "
                            "model_store/specs/digits-cnn.json)")
    train.add_argument("--epochs", type=_positive_int, default=12,
                       help="passes over the augmented training set "
                            "(default: %(default)s)")
    train.add_argument("--batch-size", type=_positive_int, default=64,
                       help="examples per update (default: %(default)s)")
    train.add_argument("--lr", type=_positive_float, default=0.001,
                       help="learning rate (default: %(default)s)")
    train.add_argument("--seed", type=int, default=0,
                       help="seed of weights, shuffling, augmentation and "
                            "dropout (default: %(default)s)")
    train.add_argument("--optimizer", choices=["adam", "momentum", "sgd"],
                       default="adam", help="update rule (default: "
                                            "%(default)s)")
    train.add_argument("--augment-copies", type=_positive_int, default=8,
                       help="random variants (size, filter, shift, JPEG) "
                            "made of each training image (default: "
                            "%(default)s)")
    train.set_defaults(func=_train)

    evaluate = commands.add_parser(
        "evaluate", help="accuracy and confusion matrix on held-out data",
        description="Evaluate a model on the held-out 20% of the digits: "
                    "accuracy, per-class precision and recall, confusion "
                    "matrix.")
    evaluate.add_argument("--model", default=DEFAULT_MODEL,
                          metavar="NAME[@VERSION]",
                          help="model to evaluate (default: %(default)s)")
    evaluate.add_argument("--json", action="store_true",
                          help="print one JSON object (accuracy, n_test, "
                               "model, version, per_class, "
                               "confusion_matrix)")
    evaluate.add_argument("--plot", metavar="PNG",
                          help="also write the confusion matrix as a picture")
    evaluate.set_defaults(func=_evaluate)

    classify = commands.add_parser(
        "classify", help="classify image files into Parquet (Beam pipeline)",
        description="Classify every image file the inputs match and write "
                    "one Parquet row per image to OUTPUT/predictions/, and "
                    "one per unusable file to OUTPUT/errors/, then "
                    "OUTPUT/_manifest.json and OUTPUT/_SUCCESS. Any other "
                    "option is a Beam pipeline option, e.g. --runner, "
                    "--direct_running_mode=multi_processing, "
                    "--direct_num_workers=N, --job_endpoint, "
                    "--environment_type, --environment_config. The default "
                    "runner is Beam's in-process FnApiRunner (no downloads).",
        epilog="exit codes: 0 done (bad files are error rows, not failures); "
               "1 the run failed; 2 a configuration mistake, reported "
               "before any work; 130 Ctrl-C, 143 SIGTERM (nothing "
               "published).")
    classify.add_argument(
        "--input", action="append", required=True, metavar="PATTERN",
        help="a file, a folder (every file below it) or a glob where ** "
             "crosses folders, on any Beam filesystem (local, gs://, "
             "s3://); repeat for several")
    classify.add_argument("--output", required=True, metavar="DIR",
                          help="output folder (local or any Beam filesystem)")
    _add_model_options(classify, "stored model or version folder")
    classify.add_argument("--partition-by", choices=["none", "run_date"],
                          default="none",
                          help="Hive-style partition folders (default: "
                               "%(default)s)")
    classify.add_argument("--run-date", metavar="YYYY-MM-DD",
                          help="partition value, only with --partition-by "
                               "run_date (default: today, UTC)")
    classify.add_argument("--overwrite", action="store_true",
                          help="replace the earlier runs in OUTPUT (they "
                               "are removed while this run is published, "
                               "once it has succeeded)")
    classify.add_argument("--skip-done", action="store_true",
                          help="add to the earlier runs in OUTPUT, "
                               "classifying only files that no earlier run "
                               "did with the same model version (same path, "
                               "size and modification time, or content with "
                               "--skip-done-by content)")
    classify.add_argument("--skip-done-by", choices=["mtime", "content"],
                          default="mtime",
                          help="what makes a file done: 'mtime' (same size "
                               "and modification time, from the listing) or "
                               "'content' (same sha256, for stores that "
                               "rewrite unchanged files; reads new files "
                               "twice) (default: %(default)s)")
    classify.add_argument("--summary-json", action="store_true",
                          help="when the run is done, print one JSON line "
                               "on stdout: run id, output, model, counts, "
                               "seconds (for schedulers)")
    classify.add_argument("--allow-empty", action="store_true",
                          help="an input that matches no file at all is "
                               "not a mistake (a nightly job over a folder "
                               "that may be empty); without it, it is "
                               "refused before any work (exit 2)")
    classify.add_argument("--retry-errors", action="store_true",
                          help="with --skip-done, also classify again files "
                               "that failed to decode or preprocess (read "
                               "and predict errors are always retried)")
    classify.set_defaults(func=_classify, accepts_beam_options=True)

    watch = commands.add_parser(
        "watch", help="classify image files as they arrive (until stopped)",
        description="Watch the inputs and classify new files as they "
                    "arrive, with the same transforms and output contract "
                    "as 'classify'. Time is cut into windows of --window "
                    "seconds; at the end of each, one incremental run "
                    "(as 'classify --skip-done') classifies the files that "
                    "settled and no earlier run did, and publishes them to "
                    "OUTPUT/predictions/date=YYYY-MM-DD/hour=HH/ and "
                    "OUTPUT/errors/..., then OUTPUT/_windows/<start>.json; "
                    "a finished hour gets _SUCCESS in its partitions. "
                    "Ctrl-C or SIGTERM stops after the window being "
                    "published (a second one aborts it; nothing is "
                    "half-published). Any other option is a Beam pipeline "
                    "option, as for 'classify'.",
        epilog="exit codes: 0 stopped; 1 runs failed 3 windows in a row; "
               "2 a configuration mistake, reported before watching; 130 "
               "aborted by a second signal.")
    watch.add_argument(
        "--input", action="append", required=True, metavar="PATTERN",
        help="a folder (every file below it), a file or a glob, on any Beam "
             "filesystem; repeat for several")
    watch.add_argument("--output", required=True, metavar="DIR",
                       help="output folder, for 'watch' only")
    watch.add_argument("--interval", type=float, default=30.0,
                       metavar="SECONDS",
                       help="how often to look for new files and for a stop "
                            "request (default: %(default)g)")
    watch.add_argument("--window", type=float, default=3600,
                       metavar="SECONDS",
                       help="files are published once per window; a "
                            "divisor of 3600 (default: %(default)g)")
    watch.add_argument("--settle", type=float, default=30.0,
                       metavar="SECONDS",
                       help="a file is read only once it was last modified "
                            "this long ago; names starting with '.' or "
                            "ending .tmp, .part, .partial, .crdownload are "
                            "never read (default: %(default)g)")
    _add_model_options(watch, "stored model or version folder, resolved "
                              "once at start")
    watch.set_defaults(func=_watch, accepts_beam_options=True)
    return parser


def _configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("imgclass: %(levelname)s: "
                                           "%(message)s"))
    # Beam warns at import that optional Google Cloud clients are missing;
    # they are not needed unless a gs:// path is used, where Beam says so.
    handler.addFilter(lambda record: "apitools not found"
                      not in record.getMessage())
    # Beam logs a Ctrl-C that lands in a DoFn as an error with a traceback;
    # the command says "interrupted" in one line instead.
    handler.addFilter(lambda record: not (
        record.exc_info and record.exc_info[0]
        and issubclass(record.exc_info[0], KeyboardInterrupt)))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    # Beam relays its workers' start-up warnings (unparsed runner flags, no
    # semi-persistent directory) that say nothing about this job; failures
    # still surface as exceptions. IMGCLASS_BEAM_LOG_LEVEL=INFO shows them.
    logging.getLogger("apache_beam").setLevel(
        os.environ.get("IMGCLASS_BEAM_LOG_LEVEL", "ERROR"))


def _set_verbosity(*, quiet: bool, verbose: bool) -> None:
    if quiet and verbose:
        raise ConfigError("-q and -v contradict each other: give one")
    if quiet:  # worker processes inherit it
        from transforms.progress import PROGRESS_ENV
        os.environ[PROGRESS_ENV] = "0"
    if verbose:
        logging.getLogger("apache_beam").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    _configure_logging()
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "accepts_beam_options", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.beam_args = extra
        _set_verbosity(quiet=args.quiet, verbose=args.verbose)
        return args.func(args)
    except ImgclassError as error:
        print(f"imgclass: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. '| head': the reader has what it wanted
        sys.stdout = open(os.devnull, "w")
        return EXIT_OK
    except KeyboardInterrupt:
        print("imgclass: interrupted", file=sys.stderr)
        return EXIT_SIGINT


if __name__ == "__main__":
    sys.exit(main())
