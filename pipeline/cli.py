"""The ``imgclass`` command line.

Exit codes: 0 success; 1 a check failed (``models verify``), the run
failed or writing to the model store failed (a full disk); 2 a usage or
configuration mistake, reported in one line before any work starts; 130
Ctrl-C (SIGINT), 143 SIGTERM: ``classify`` publishes nothing then (once
publishing has started, it completes it and exits 0).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import sys
import threading
import time

from model_store import DEFAULT_MODEL, fs
from model_store.datasets import DATASETS
from model_store.errors import (
    ConfigError,
    ImgclassError,
    StoreReadError,
    StoreWriteError,
)
from model_store.folders import VAL_FRACTION
from model_store.images import DEFAULT_MAX_PIXELS
from model_store.train_config import (
    BASE_DEFAULTS,
    DIGITS_DEFAULTS,
    FASHION_DEFAULTS,
    LR_RANGE,
    LR_SCHEDULES,
    MAX_AUGMENT_COPIES,
    MAX_EPOCHS,
    OPTIMIZER_NAMES,
    SPEC_DEFAULTS,
)
from pipeline import collection, logs, signals, tables, worker
from transforms import defaults
from transforms.files import DEFAULT_MAX_FILE_BYTES

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM


def _models_list(args) -> int:
    from model_store.store import (
        check_store_to_read,
        ignored_folders,
        list_models,
        store_root,
    )

    check_store_to_read(args.store)
    infos = list_models(args.store)
    for folder, why in ignored_folders(args.store):
        print(f"imgclass: warning: {fs.shown(folder)}: {why}",
              file=sys.stderr)
    aliases, damage = _aliases_by_version(infos, args.store)
    rows = [(_listing(info, args.store, damage.get(info.name)),
             aliases.get(info.ref, [])) for info in infos]
    rows += _alias_only_listings(infos, args.store)
    rows += _dangling_listings(infos, aliases, args.store)
    rows.sort(key=lambda item: (item[0]["name"], item[0]["version"] or 0))
    if args.json:
        for row, names in rows:
            print(json.dumps(dict(row, aliases=names)))
        return EXIT_OK
    if not rows:
        print(f"no models in {store_root(args.store)}")
        return EXIT_OK
    print(f"{'MODEL':<24} {'VERSION':>7}  {'ACCURACY':>8}  {'ALIASES':<14} "
          f"CREATED")
    for row, names in rows:
        if row["ok"]:
            accuracy = row["accuracy"]
            accuracy = f"{accuracy:.4f}" if accuracy is not None else "-"
            created = row["created_at"] or "-"
        elif row["error"].startswith(_NO_VERSIONS) \
                or row["error"] == _MISSING_VERSION:
            accuracy, created = "-", row["error"]
        else:
            accuracy, created = "BROKEN", row["error"].split(": ")[0]
        version = "-" if row["version"] is None else row["version"]
        print(f"{row['name']:<24} {version:>7}  {accuracy:>8}  "
              f"{','.join(names) or '-':<14} {created}")
    return EXIT_OK


_NO_VERSIONS = "no versions; aliases: "
_MISSING_VERSION = "missing: deleted, but aliases still name it"


def _dangling_listings(infos, aliases, store) -> list[tuple[dict, list]]:
    """``(row, alias names)`` of each version that aliases name but the
    store no longer holds, beside the model's other versions (what
    ``models verify`` reports as a DanglingAliasError)."""
    from model_store.store import store_root

    listed = {info.ref for info in infos}
    rows = []
    for ref, names in aliases.items():
        if ref not in listed:
            name, version = ref.rsplit("@", 1)
            rows.append(({"name": name, "version": int(version), "ok": False,
                          "location": fs.join(store_root(store), name,
                                              version),
                          "error": _MISSING_VERSION}, names))
    return rows


def _alias_only_listings(infos, store) -> list[tuple[dict, list]]:
    """``(row, alias names)`` of each model whose versions were all deleted
    while its aliases file remains: every alias names a missing version
    (what ``models verify`` reports as a DanglingAliasError), e.g. ``no
    versions; aliases: prod -> 3 (missing)``, or why the file cannot be
    read."""
    from model_store.store import model_names, read_aliases, store_root

    listed = {info.name for info in infos}
    rows = []
    for name in (n for n in model_names(store) if n not in listed):
        row = {"name": name, "version": None, "ok": False,
               "location": fs.join(store_root(store), name)}
        try:
            aliases = read_aliases(name, root=store)
        except ImgclassError as error:
            rows.append((dict(row, error=str(error)), []))
            continue
        shown = ", ".join(f"{alias} -> {version} (missing)"
                          for alias, version in sorted(aliases.items()))
        rows.append((dict(row, error=_NO_VERSIONS + (shown or "none")),
                     sorted(aliases)))
    return rows


def _aliases_by_version(infos, store):
    """``({"NAME@V": [alias, ...]}, {NAME: error})``: the aliases,
    ``latest`` included (pinned or the highest version), and the models
    whose name does not resolve (e.g. a damaged aliases file)."""
    from model_store.store import read_aliases, resolve

    out: dict[str, list[str]] = {}
    damage: dict[str, ImgclassError] = {}
    for name in sorted({info.name for info in infos}):
        try:
            aliases = dict(read_aliases(name, root=store))
            aliases["latest"] = resolve(name, root=store).version
        except ImgclassError as error:
            damage[name] = error
            continue
        for alias, version in sorted(aliases.items()):
            out.setdefault(f"{name}@{version}", []).append(alias)
    return out, damage


def _listing(info, store, damage=None) -> dict:
    """One version as ``models list --json`` prints it; ``damage``, the
    error of its model as a whole, makes it broken too."""
    from model_store.store import load_model

    row = {"name": info.name, "version": info.version,
           "location": info.location}
    if damage is not None:
        return dict(row, ok=False, error=str(damage))
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

    stored = load_model(args.model, root=args.store)
    network = stored.build()
    layers = [{"name": layer.name, "type": type(layer).__name__,
               "inputs": [parent.name for parent in layer.input_layers],
               "output_shape": list(layer.output_shape),
               "params": {p.name.split(".")[1]: list(
                   p.get_value(borrow=True).shape) for p in layer.params}}
              for layer in L.get_all_layers(network)]
    if args.json:
        print(json.dumps({"ref": stored.ref, "location": stored.location,
                          "metadata": stored.metadata, "layers": layers,
                          "flops_per_image": L.count_flops(network)}))
        return EXIT_OK
    print(f"{stored.ref}  ({stored.location})")
    meta = stored.metadata
    for key in ("description", "created_at", "input_shape", "color_mode",
                "resize", "normalization", "background", "class_names",
                "metrics", "weights_sha256"):
        if key in meta:
            print(f"  {key}: {json.dumps(meta[key])}")
    training = meta.get("training", {})
    if training:
        print(f"  training: {json.dumps({k: v for k, v in training.items() if k != 'history'})}")
    print("  layers:")
    previous = None
    for layer in layers:
        params = ", ".join(f"{name}{tuple(shape)}"
                           for name, shape in layer["params"].items())
        inputs = ("" if layer["inputs"] in ([], [previous]) else
                  f" <- {', '.join(layer['inputs'])}")
        print(f"    {layer['name']:<8} {layer['type']:<15} -> "
              f"{tuple(layer['output_shape'])} {params}{inputs}")
        previous = layer["name"]
    print(f"  forward pass: {L.count_flops(network) / 1e6:.2f} MFLOP per image")
    return EXIT_OK


def _models_verify(args) -> int:
    from model_store.store import check_store_to_read, verify

    check_store_to_read(args.store)
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


def _models_import_onnx(args) -> int:
    from model_store.onnx_import import import_onnx
    from model_store.store import check_new_version

    check_new_version(args.name, args.store)
    stored = import_onnx(args.file, name=args.name, classes=args.classes,
                         preprocessing=args.preprocessing, root=args.store)
    print(f"saved {stored.ref} to {stored.location}: "
          f"{len(stored.spec['layers'])} layers, {len(stored.class_names)} "
          f"classes, input {stored.metadata['input_shape']}")
    return _print_promotion(stored, args.store)


def _train(args) -> int:
    from model_store.store import check_new_version
    from model_store.train import train_model

    check_new_version(args.name, args.store)  # before any training
    if (args.dataset is None) == (args.data is None):
        raise ConfigError(f"give either --dataset "
                          f"{{{','.join(DATASETS)}}} or --data PATH")
    if args.dataset:
        for option in ("base", "fine_tune_blocks", "val_data",
                       "val_fraction"):
            if getattr(args, option):  # None, or 0 blocks: not given
                raise ConfigError(f"--{option.replace('_', '-')} applies "
                                  f"to --data (your labelled folders), not "
                                  f"to --dataset {args.dataset}")
    if args.no_augment and args.dataset == "digits":
        raise ConfigError("--no-augment applies to --data and --dataset "
                          "fashion-mnist, not to --dataset digits (the "
                          "digits are rendered as files by their "
                          "augmentation): leave it out")
    if args.limit and args.dataset != "fashion-mnist":
        raise ConfigError("--limit applies to --dataset fashion-mnist only: "
                          "to train on fewer images, give a smaller folder")
    if args.dataset == "fashion-mnist":
        from model_store.fashion import train_fashion
        stored = train_fashion(name=args.name,
                               spec_path=args.spec or _default_spec(args),
                               config=_train_config(args, FASHION_DEFAULTS),
                               root=args.store, promote=args.promote,
                               stream=sys.stderr, limit=args.limit)
    elif args.dataset:
        stored = train_model(dataset=args.dataset, name=args.name,
                             spec_path=args.spec or _default_spec(args),
                             config=_train_config(args, DIGITS_DEFAULTS),
                             root=args.store, promote=args.promote)
    if args.dataset:
        print(f"saved {stored.ref} to {stored.location}: held-out accuracy "
              f"{stored.metadata['metrics']['accuracy']:.4f} "
              f"(n={stored.metadata['metrics']['n_test']})")
        return _print_promotion(stored, args.store)
    return _train_folder(args)


def _default_spec(args) -> str:
    from model_store.train import SPECS_DIR
    name = {"fashion-mnist": "fashion"}.get(args.dataset, args.dataset)
    return os.path.join(SPECS_DIR, f"{name}-cnn.json")


def _train_config(args, defaults):
    """The settings: the options given, else ``defaults`` (a
    ``TrainConfig`` of ``model_store.train_config``)."""
    given = {key: getattr(args, key) for key in
             ("epochs", "batch_size", "lr", "optimizer", "augment_copies",
              "lr_schedule")
             if getattr(args, key) is not None}
    if args.no_augment:
        if args.augment_copies is not None:
            raise ConfigError("give --augment-copies N or --no-augment, not "
                              "both: --no-augment trains on the plain "
                              "images only")
        given["augment_copies"] = 0
    return dataclasses.replace(defaults, seed=args.seed, **given)


def _train_folder(args) -> int:
    from model_store.folder_training import FolderData, train_from_spec, train_transfer
    from model_store.store import save_version

    if args.base and args.spec:
        raise ConfigError("give --base MODEL or --spec PATH, not both: "
                          "--base trains a new head on a stored model's "
                          "features, --spec a whole network from scratch")
    if (args.base is None) == (args.spec is None):
        raise ConfigError("with --data, give --base MODEL (transfer "
                          "learning, e.g. --base efficientnet-lite0) or "
                          "--spec PATH (a network trained from scratch)")
    if args.fine_tune_blocks and not args.base:
        raise ConfigError("--fine-tune-blocks needs --base MODEL")
    if args.val_data and args.val_fraction is not None:
        raise ConfigError("give --val-data PATH or --val-fraction F, not "
                          "both: --val-fraction splits --data when there is "
                          "no --val-data")
    folders = FolderData(args.data, args.val_data, VAL_FRACTION
                         if args.val_fraction is None else args.val_fraction)
    if args.base:
        network, metadata = train_transfer(
            folders, name=args.name, base=_load_base(args.base, args.store),
            config=_train_config(args, BASE_DEFAULTS), stream=sys.stderr,
            fine_tune_blocks=args.fine_tune_blocks)
    else:
        network, metadata = train_from_spec(
            folders, name=args.name, spec_path=args.spec,
            config=_train_config(args, SPEC_DEFAULTS), stream=sys.stderr)
    stored, _ = save_version(network, name=args.name, metadata=metadata,
                             root=args.store, promote=args.promote)
    metrics = stored.metadata["metrics"]
    print(f"saved {stored.ref} to {stored.location}: validation accuracy "
          f"{metrics['accuracy']:.4f} (n={metrics['n_test']}, best epoch "
          f"{stored.metadata['training']['best_epoch']})")
    return _print_promotion(stored, args.store)


def _load_base(ref: str, store):
    """``--base``: from the store in use, else from the shipped models."""
    from model_store.errors import UnknownModelError
    from model_store.store import DEFAULT_ROOT, load_model

    try:
        return load_model(ref, root=store)
    except UnknownModelError as in_store:
        if store is None:
            raise
        try:
            return load_model(ref, root=DEFAULT_ROOT)
        except UnknownModelError:
            raise UnknownModelError(f"--base: {in_store}; nor is it one of "
                                    f"the shipped models") from None


def _print_promotion(stored, store) -> int:
    from model_store.store import resolve

    latest = resolve(stored.name, root=store)
    if latest.version == stored.version:
        print(f"{stored.name}@latest is now {stored.ref}")
    else:
        print(f"{stored.name}@latest is still {latest.ref}: compare them "
              f"with 'imgclass evaluate', then 'imgclass models promote "
              f"{stored.ref}' (or train with --promote)")
    return EXIT_OK


def _models_promote(args) -> int:
    from model_store.store import promote

    model = promote(args.model, args.alias, root=args.store)
    print(f"{model.name}@{args.alias} -> {model.ref}")
    return EXIT_OK


def _check_dataset(stored, dataset: str) -> None:
    """ConfigError naming ``--dataset`` when ``stored`` classifies the
    classes of another built-in dataset than ``dataset`` (fashion-cnn
    evaluated on the digits, the default)."""
    from model_store import datasets, fashion

    classes = [str(name) for name in stored.class_names]
    for name, names in (("digits", datasets.CLASS_NAMES),
                        ("fashion-mnist", fashion.CLASS_NAMES)):
        if name != dataset and classes == list(names):
            raise ConfigError(f"{stored.ref} classifies the {name} "
                              f"classes, not the {dataset} ones: give "
                              f"--dataset {name}")


def _evaluate(args) -> int:
    from model_store.evaluate import (
        check_plot_path,
        evaluate_on_folder,
        evaluate_on_split,
        plot_confusion,
    )
    from model_store.store import load_model

    if args.data and args.dataset:
        raise ConfigError("give --data (your labelled folders) or --dataset "
                          "(built-in test images), not both")
    plot = check_plot_path(args.plot) if args.plot else None
    stored = load_model(args.model, root=args.store)
    if not args.data:
        _check_dataset(stored, args.dataset or DATASETS[0])  # digits
    if args.data:
        metrics = evaluate_on_folder(stored, args.data)
        what = f"images in {fs.shown(args.data)}"
    elif args.dataset == "fashion-mnist":
        from model_store.fashion import load_fashion_split
        metrics = evaluate_on_split(stored, load_fashion_split())
        metrics["dataset"] = what = "Fashion-MNIST test images"
    else:
        from model_store.datasets import load_digits_split
        metrics = evaluate_on_split(stored, load_digits_split())
        what = "held-out digits"
    # The metrics first: a plot that cannot be written after all (a full
    # disk) does not lose them.
    if args.json:
        print(json.dumps(metrics), flush=True)
    else:
        _print_metrics(stored.ref, metrics, what)
    if plot:
        plot_confusion(metrics, plot)
        if not args.json:
            print(f"wrote {plot}")
    return EXIT_OK


def _print_metrics(ref: str, metrics: dict, what: str) -> None:
    print(f"{ref}: accuracy {metrics['accuracy']:.4f} on "
          f"{metrics['n_test']} {what}")
    # Class names (from folder names, a --classes file) and paths as a
    # terminal may show them: a control character (ESC, a newline) %XX.
    names = [fs.one_line(name) for name in metrics["per_class"]]
    width = max(6, *(len(name) for name in names))
    print(f"{'class':>{width}} {'precision':>9} {'recall':>7} {'f1':>7} "
          f"{'support':>7}")
    for name, row in zip(names, metrics["per_class"].values()):
        print(f"{name:>{width}} {row['precision']:>9.4f} "
              f"{row['recall']:>7.4f} {row['f1']:>7.4f} {row['support']:>7}")
    print("confusion matrix (rows: true class, columns: predicted):")
    for name, row in zip(names, metrics["confusion_matrix"]):
        print(f"{name:>{width}} " + " ".join(f"{c:>4}" for c in row))
    if metrics.get("mistakes"):
        print("most confident mistakes:")
        for row in metrics["mistakes"]:
            print(f"  {row['confidence']:.4f} {fs.one_line(row['predicted'])}"
                  f" (true {fs.one_line(row['true'])}): "
                  f"{fs.one_line(row['path'])}")
    for row in metrics.get("broken", []):
        print(f"skipped {fs.one_line(row['path'])}: {row['error']}",
              file=sys.stderr)


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


def _check_summary_json(args) -> None:
    """``--summary-json >&-``: Python's stdout is None and print() writes
    nothing; refused before the run, not lost after it."""
    if args.summary_json and sys.stdout is None:
        raise ConfigError("--summary-json: the standard output is closed; "
                          "redirect it to a file, or leave the option out")


def _classify(args) -> int:
    from pipeline.run import ClassifyConfig, RunFailed, run_classify, summary

    _check_summary_json(args)
    config = ClassifyConfig(
        inputs=args.input, output=args.output, model_ref=args.model,
        store=args.store, top_k=args.top_k, batch_size=args.batch_size,
        max_pixels=args.max_pixels, max_file_bytes=args.max_file_bytes,
        partition_by=args.partition_by,
        run_date=args.run_date, overwrite=args.overwrite,
        skip_done=args.skip_done, skip_done_by=args.skip_done_by,
        min_confidence=args.min_confidence, retry_errors=args.retry_errors,
        allow_empty=args.allow_empty, beam_args=args.beam_args,
        emit_embeddings=args.emit_embeddings, table_format=args.table_format,
        iceberg_catalog=args.iceberg_catalog,
        iceberg_namespace=args.iceberg_namespace)
    # Stopped, the libraries' lines are silenced (``logs.stopped``): the
    # command says "interrupted" once.
    with signals.stopping(_stop_quietly) as received:
        try:
            manifest = run_classify(config, log=_log(args),
                                    started=process_started())
        except RunFailed as error:
            print(f"imgclass: run failed: {error}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt as error:
            return _interrupted(
                received, f": {str(error) or 'nothing published'}")
    if args.summary_json:
        print(json.dumps(summary(manifest)), flush=True)
    return EXIT_OK


def _watch(args) -> int:
    from pipeline.run import ClassifyConfig, RunFailed
    from pipeline.watch import stop_on_signals, watch

    config = ClassifyConfig(
        inputs=args.input, output=args.output, model_ref=args.model,
        store=args.store, top_k=args.top_k, batch_size=args.batch_size,
        max_pixels=args.max_pixels, max_file_bytes=args.max_file_bytes,
        min_confidence=args.min_confidence,
        beam_args=args.beam_args)
    with stop_on_signals(threading.Event(), quiet=args.quiet) as stop:
        try:
            watch(config, interval=args.interval, window=args.window,
                  settle=args.settle, stop_event=stop, log=_log(args))
        except RunFailed as error:
            print(f"imgclass: watch failed: {error}", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


def _store_path(text: str) -> str:
    """An empty --store (a script's unset "$STORE") is a mistake, not the
    default store."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "is empty: give a folder or a Beam filesystem path, or leave "
            "the option out for the default store")
    return text


def _given(text: str) -> str:
    """A path option given empty (a script's unset "$DATA") is a mistake,
    not the option left out, nor the working folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "is empty: give a value, or leave the option out")
    return text


def _positive_int(text: str) -> int:
    """ASCII digits only: Python's int() also reads other scripts' digits
    and '_' separators, which no other option (a model version, the run
    date) takes."""
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {text!r}")
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {value}")
    return value


def _number_in(accepts, expected: str):
    """An argparse type: a float that ``accepts`` allows, else one line.
    ASCII only, without '_': float() also reads other scripts' digits and
    digit separators."""
    def parse(text: str) -> float:
        try:
            if not text.isascii() or "_" in text:
                raise ValueError
            value = float(text)
        except ValueError:
            value = math.nan
        if not accepts(value):
            raise argparse.ArgumentTypeError(
                f"expected {expected}, got {text!r}")
        return value
    return parse


_probability = _number_in(lambda v: 0.0 <= v <= 1.0,
                          "a probability from 0 to 1")
_fraction = _number_in(lambda v: 0.0 < v < 1.0, "a number between 0 and 1")
_positive_float = _number_in(lambda v: 0.0 < v < math.inf,
                             "a positive number")


def _stop_quietly() -> None:
    """On Ctrl-C or SIGTERM: only imgclass's lines from now on, and local
    worker processes are told to stop."""
    logs.stopped()
    worker.stop_local_workers()


def _log(args):
    """Where run messages go: stderr, or nowhere with -q; either takes any
    path (a name that is not UTF-8), as stderr does: backslashreplace."""
    if not args.quiet:
        return sys.stderr
    return open(os.devnull, "w", errors="backslashreplace")


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


class _Parser(argparse.ArgumentParser):
    """Reports a usage mistake in one line (exit code 2), not a usage block."""

    def error(self, message):
        raise ConfigError(f"{message} (see '{self.prog} --help')")


def _add_io_options(parser, *, model_help: str,
                    output_note: str = "") -> None:
    """The options ``classify`` and ``watch`` share: inputs, output, model
    and how files are read and classified."""
    parser.add_argument(
        "--input", action="append", required=True, metavar="PATTERN",
        help="a file, a folder (every file below it) or a glob where ** "
             "crosses folders, on any Beam filesystem (local, gs://, "
             "s3://); repeat for several")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help=f"output folder (local or any Beam "
                             f"filesystem){output_note}")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        metavar="NAME[@VERSION]|PATH",
                        help=f"{model_help} (default: %(default)s)")
    parser.add_argument("--top-k", type=_positive_int,
                        metavar="K",
                        help=f"best classes listed per row (default: "
                             f"{defaults.DEFAULT_TOP_K}, or all the classes "
                             f"of a model with fewer)")
    parser.add_argument("--batch-size", type=_positive_int,
                        default=defaults.DEFAULT_BATCH_SIZE,
                        help="files per batch: read and decoded together, "
                             "one Theano call (default: %(default)s)")
    parser.add_argument("--max-pixels", type=_positive_int,
                        default=DEFAULT_MAX_PIXELS,
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
        "--store", metavar="DIR", default=default, type=_store_path,
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


def _add_models_command(commands) -> None:
    """``models``: list, show, verify, promote and import stored models."""
    models = commands.add_parser(
        "models", help="list, show, verify, promote and import stored models",
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
    promote = models_commands.add_parser(
        "promote", help="point an alias (default: latest) at a version",
        description="Point NAME@ALIAS at a stored version, e.g. "
                    "'imgclass models promote shop@3 --alias prod'; "
                    "nightly jobs that run --model shop@prod then use it. "
                    "Without --alias, makes it NAME@latest (what --model "
                    "NAME means).")
    promote.add_argument("model", metavar="NAME@VERSION",
                         help="the version, e.g. shop@3 (or an alias)")
    promote.add_argument("--alias", default="latest",
                         help="alias to move (default: %(default)s)")
    promote.set_defaults(func=_models_promote)
    importing = models_commands.add_parser(
        "import", help="save a model from another framework as a version",
        description="Import a model file as the next version of a model.")
    import_formats = importing.add_subparsers(dest="import_format",
                                              metavar="FORMAT", required=True)
    from model_store.onnx_import import SUPPORTED_OPS

    from_onnx = import_formats.add_parser(
        "onnx", help="an ONNX image classifier (NCHW float input)",
        description="Translate an ONNX image classifier into a stored "
                    "version (spec, weights, metadata). Supported ops: "
                    f"{', '.join(SUPPORTED_OPS)} (see README, 'Importing an "
                    "ONNX model'). Anything else stops with exit 2 and "
                    "writes nothing.")
    from_onnx.add_argument("file", metavar="FILE", help="the .onnx file")
    from_onnx.add_argument("--name", required=True,
                           help="model name; the version is the next free one")
    from_onnx.add_argument("--classes", metavar="FILE", type=_given,
                           help="class names, one per line in output order "
                                "(default: 0, 1, ...)")
    from_onnx.add_argument("--preprocessing", metavar="JSON", type=_given,
                           help="JSON object or file with color_mode, resize, "
                                "mean, std (0..1 scale), background, "
                                "resize_shorter (default: bilinear resize to "
                                "the input size, pixels / 255)")
    from_onnx.set_defaults(func=_models_import_onnx)


def _add_train_command(commands) -> None:
    """``train``: a new model version from a dataset or a folder."""
    train = commands.add_parser(
        "train", help="train a model and save a new version",
        description="Train a network with theano.grad and save it as a new "
                    "version in the store: on a built-in dataset "
                    "(--dataset), or on a folder with one sub-folder of "
                    "images per class (--data), from a JSON spec (--spec) "
                    "or on top of a stored model's frozen features (--base, "
                    "e.g. efficientnet-lite0). Deterministic for a given "
                    "seed. The new version becomes NAME@latest only with "
                    "--promote (or if it is the first).")
    train.add_argument("--dataset", choices=list(DATASETS),
                       help="training data: 'digits', the UCI handwritten "
                            "digits that scikit-learn ships; "
                            "'fashion-mnist', as Debian's "
                            "dataset-fashion-mnist package installs it "
                            "(evaluated on its 10,000 test images)")
    train.add_argument("--limit", type=_positive_int, metavar="N",
                       help="with --dataset fashion-mnist: use only the "
                            "first N training images (a quick check)")
    train.add_argument("--data", metavar="PATH", type=_given,
                       help="training images: one sub-folder per class "
                            "(local or any Beam filesystem); unreadable "
                            "files are listed and skipped")
    train.add_argument("--val-data", metavar="PATH", type=_given,
                       help="validation images, laid out as --data "
                            "(default: a stratified --val-fraction of "
                            "--data)")
    train.add_argument("--val-fraction", type=_fraction,
                       help=f"share of each class of --data held out for "
                            f"validation when there is no --val-data, with "
                            f"a fixed seed (default: {VAL_FRACTION})")
    train.add_argument("--base", metavar="MODEL", type=_given,
                       help="transfer learning: a stored model (e.g. "
                            "efficientnet-lite0) whose frozen features "
                            "feed a new dense + softmax head; features are "
                            "cached per file under the user cache folder")
    train.add_argument("--fine-tune-blocks", type=_positive_int,
                       default=0, metavar="N",
                       help="with --base: also train the base's last N "
                            "blocks (batch norm in inference mode; the "
                            "outputs of the block before them are cached "
                            "instead of the features); try a smaller --lr")
    train.add_argument("--name", required=True,
                       help="model name; the version is the next free one")
    train.add_argument("--spec", metavar="PATH", type=_given,
                       help="JSON network spec (default with --dataset: "
                            "model_store/specs/DATASET-cnn.json)")
    train.add_argument("--promote", action="store_true",
                       help="make the new version NAME@latest (otherwise "
                            "latest stays where it is, except for a first "
                            "version)")
    _add_train_settings(train)
    train.set_defaults(func=_train)


def _add_train_settings(train) -> None:
    """``train``'s options that override a ``TrainConfig``; their help
    states the defaults of model_store.train_config (none is set here:
    each kind of training has its own)."""
    digits, fashion = DIGITS_DEFAULTS, FASHION_DEFAULTS
    train.add_argument("--epochs", type=_positive_int,
                       help=f"passes over the training set (default: "
                            f"{digits.epochs}; {BASE_DEFAULTS.epochs} with "
                            f"--base; {fashion.epochs} for fashion-mnist); "
                            f"at most {MAX_EPOCHS}")
    train.add_argument("--batch-size", type=_positive_int,
                       help=f"examples per update (default: "
                            f"{digits.batch_size}; {fashion.batch_size} for "
                            f"fashion-mnist)")
    train.add_argument("--lr", type=_positive_float,
                       help=f"learning rate (default: {digits.lr:g}; "
                            f"{BASE_DEFAULTS.lr:g} with --base; "
                            f"{fashion.lr:g} for fashion-mnist); from "
                            f"{LR_RANGE[0]:.3g} to {LR_RANGE[1]:.3g}")
    train.add_argument("--lr-schedule", metavar="|".join(LR_SCHEDULES),
                       help=f"learning rate over the epochs: constant, or "
                            f"cosine decay to 0 (default: "
                            f"{digits.lr_schedule}; {fashion.lr_schedule} "
                            f"for fashion-mnist)")
    train.add_argument("--seed", type=int, default=DIGITS_DEFAULTS.seed,
                       help="seed of weights, shuffling, augmentation and "
                            "dropout (default: %(default)s)")
    # Checked by TrainConfig.
    train.add_argument("--optimizer", metavar="|".join(OPTIMIZER_NAMES),
                       help=f"update rule (default: {digits.optimizer})")
    train.add_argument("--augment-copies", type=_positive_int,
                       help=f"random variants made of each training image: "
                            f"size, filter, shift, JPEG for --dataset digits "
                            f"(default {digits.augment_copies}); random "
                            f"resized crop and horizontal flip for --data "
                            f"(default {SPEC_DEFAULTS.augment_copies}); at "
                            f"most {MAX_AUGMENT_COPIES}")
    train.add_argument("--no-augment", action="store_true",
                       help="with --data: train on the plain images")


def _add_evaluate_command(commands) -> None:
    """``evaluate``: metrics on held-out digits, Fashion-MNIST or a folder."""
    evaluate = commands.add_parser(
        "evaluate", help="accuracy and confusion matrix on held-out data",
        description="Evaluate a model on a labelled image folder (--data), "
                    "or by default on the held-out 20% of the digits: "
                    "accuracy, per-class precision, recall and F1 "
                    "(scikit-learn), confusion matrix, and the most "
                    "confident mistakes by path.")
    evaluate.add_argument("--model", default=DEFAULT_MODEL,
                          metavar="NAME[@VERSION]",
                          help="model to evaluate (default: %(default)s)")
    evaluate.add_argument("--dataset", choices=list(DATASETS),
                          help="built-in test data when --data is not "
                               "given: the held-out digits, or "
                               "Fashion-MNIST's 10,000 test images "
                               "(default: digits)")
    evaluate.add_argument("--data", metavar="PATH", type=_given,
                          help="labelled images: one sub-folder per class, "
                               "named as the model's classes (local or any "
                               "Beam filesystem); unreadable files are "
                               "listed and skipped")
    evaluate.add_argument("--json", action="store_true",
                          help="print one JSON object (accuracy, n_test, "
                               "model, version, per_class, "
                               "confusion_matrix; with --data also "
                               "mistakes and broken)")
    evaluate.add_argument("--plot", metavar="PNG", type=_given,
                          help="also write the confusion matrix as a picture")
    evaluate.set_defaults(func=_evaluate)


def _add_classify_command(commands) -> None:
    """``classify``: the Beam pipeline over files, into Parquet or tables."""
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
               "published; once publishing has started, it is completed: "
               "0).")
    _add_io_options(classify, model_help="stored model or version folder")
    _add_run_options(classify)
    _add_table_options(classify)
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
    classify.set_defaults(func=_classify, accepts_beam_options=True,
                          builds_pipelines=True)


def _add_run_options(parser) -> None:
    """``classify``'s partitioning and how a run relates to earlier ones."""
    parser.add_argument("--partition-by", choices=defaults.PARTITIONS,
                        default="none",
                        help="Hive-style partition folders (default: "
                             "%(default)s)")
    parser.add_argument("--run-date", metavar="YYYY-MM-DD",
                        help="partition value, only with --partition-by "
                             "run_date (default: today, UTC)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the earlier runs in OUTPUT (they "
                             "are removed while this run is published, "
                             "once it has succeeded); Parquet outputs "
                             "only: a Delta or Iceberg table is replaced "
                             "with the table's own tools")
    parser.add_argument("--skip-done", action="store_true",
                        help="add to the earlier runs in OUTPUT, "
                             "classifying only files that no earlier run "
                             "did with the same model version (same path, "
                             "size and modification time, or content with "
                             "--skip-done-by content)")
    parser.add_argument("--skip-done-by", choices=defaults.SKIP_BY,
                        help="what makes a file done: 'mtime' (same size "
                             "and modification time, from the listing) or "
                             "'content' (same sha256, for stores that "
                             "rewrite unchanged files; reads new files "
                             f"twice) (default: {defaults.DEFAULT_SKIP_BY})")


def _add_table_options(parser) -> None:
    """``classify``'s table format and the columns it adds."""
    parser.add_argument("--table-format", choices=list(tables.FORMATS),
                        default=tables.DEFAULT_FORMAT,
                        help="'parquet': Parquet files and our manifest; "
                             "'delta' or 'iceberg': the same files "
                             "committed to Delta Lake or Iceberg tables, "
                             "one commit per run (default: %(default)s)")
    parser.add_argument("--iceberg-catalog", metavar="URI",
                        help="SQL catalog of the Iceberg tables, a "
                             "SQLAlchemy URI (default: sqlite:///"
                             f"OUTPUT/{tables.CATALOG_FILE})")
    parser.add_argument("--iceberg-namespace", metavar="NAME",
                        help="namespace of the Iceberg tables "
                             f"(default: {tables.DEFAULT_NAMESPACE})")
    parser.add_argument("--emit-embeddings", action="store_true",
                        help="add an 'embedding' column: the model's "
                             "penultimate features (256 floats for "
                             "digits-cnn), for similarity search")


def _add_watch_command(commands) -> None:
    """``watch``: classify files as they arrive, window by window."""
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
    _add_io_options(watch, output_note=", for 'watch' only",
                    model_help="stored model or version folder, resolved "
                               "once at start")
    watch.add_argument("--interval", type=float,
                       default=defaults.DEFAULT_INTERVAL,
                       metavar="SECONDS",
                       help="how often to look for new files and for a stop "
                            "request (default: %(default)g)")
    watch.add_argument("--window", type=float,
                       default=defaults.DEFAULT_WINDOW,
                       metavar="SECONDS",
                       help="files are published once per window; a "
                            "divisor of 3600 (default: %(default)g)")
    watch.add_argument("--settle", type=float,
                       default=defaults.DEFAULT_SETTLE,
                       metavar="SECONDS",
                       help="a file is read only once it was last modified "
                            "this long ago; names starting with '.' or "
                            "ending .tmp, .part, .partial, .crdownload are "
                            "never read (default: %(default)g)")
    watch.set_defaults(func=_watch, accepts_beam_options=True,
                       builds_pipelines=True)


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

    _add_models_command(commands)
    _add_train_command(commands)
    _add_evaluate_command(commands)
    _add_classify_command(commands)
    _add_watch_command(commands)
    return parser


def _set_verbosity(*, quiet: bool, verbose: bool) -> None:
    if quiet and verbose:
        raise ConfigError("-q and -v contradict each other: give one")
    if quiet:  # worker processes inherit it
        from transforms.progress import PROGRESS_ENV
        os.environ[PROGRESS_ENV] = "0"
    if quiet or verbose:
        logs.configure(quiet=quiet, verbose=verbose)


def main(argv: list[str] | None = None) -> int:
    from model_store.store import saves_recorded

    # Ctrl-C or SIGTERM: KeyboardInterrupt, and recorded, so that a stop a
    # library swallowed and turned into another error (an interrupted
    # import of scipy inside Theano's) is still reported as a stop; the
    # versions saved before it are named.
    with signals.stopping() as received, saves_recorded() as saved, \
            _console():
        try:
            logs.configure()
            parser = build_parser()
            args, extra = parser.parse_known_args(argv)
            if extra and not getattr(args, "accepts_beam_options", False):
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.beam_args = extra
            _set_verbosity(quiet=args.quiet, verbose=args.verbose)
            if not getattr(args, "builds_pipelines", False):
                collection.resume()  # classify and watch: once built
            return args.func(args)
        except (StoreWriteError, StoreReadError) as error:  # not a mistake
            print(f"imgclass: error: {error}", file=sys.stderr)
            return EXIT_FAILED
        except ImgclassError as error:
            print(f"imgclass: error: {error}", file=sys.stderr)
            return EXIT_USAGE
        except BrokenPipeError:  # '| head': the reader has what it wanted
            sys.stdout = open(os.devnull, "w")
            return EXIT_OK
        except _StdoutError as error:  # '> file' on a full disk
            # What the command did is done (a run is published); what it
            # printed is lost.
            print(f"imgclass: error: cannot write the standard output: "
                  f"{error.strerror}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            return _interrupted(received, _after_saving(saved))
        except Exception:
            if received:
                return _interrupted(received, _after_saving(saved))
            raise
        finally:
            collection.resume()


class _StdoutError(OSError):
    """Writing the standard output failed (not a closed pipe)."""


class _CheckedStdout:
    """``sys.stdout`` whose write errors (a full disk) are _StdoutError,
    so that the command can tell them from other OSErrors."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._checked(self._stream.write, text)

    def flush(self) -> None:
        self._checked(self._stream.flush)

    def _checked(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as error:
            raise _StdoutError(error.errno, error.strerror) from error

    def __getattr__(self, name):
        return getattr(self._stream, name)


class _LossyStderr:
    """``sys.stderr`` whose write errors (``2>/dev/full``) are ignored: its
    messages are lost, the command's outcome and exit code are not
    (stdout's are the command's output: :class:`_CheckedStdout`)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, UnicodeEncodeError):
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _console():
    """stdout and stderr while a command runs: what their encoding cannot
    show (``PYTHONIOENCODING=ascii``: a class or file name with ``é``) is
    written as a backslash escape, not a UnicodeEncodeError; stdout's
    write errors are :class:`_CheckedStdout`'s, stderr's are ignored
    (:class:`_LossyStderr`)."""
    out, err = sys.stdout, sys.stderr
    for stream in (out, err):
        _escape_unencodable(stream)
    sys.stdout = _CheckedStdout(out) if out is not None else None
    sys.stderr = _LossyStderr(err) if err is not None else None
    try:
        yield
    finally:
        if isinstance(sys.stdout, _CheckedStdout):
            sys.stdout = out
        if isinstance(sys.stderr, _LossyStderr):  # not logs.stopped()'s
            sys.stderr = err


def _escape_unencodable(stream) -> None:
    """``errors="backslashreplace"`` for ``stream`` (for the rest of the
    process) if it was ``strict``; other handlers were chosen: they stay."""
    if getattr(stream, "errors", None) == "strict" and \
            hasattr(stream, "reconfigure"):
        with contextlib.suppress(OSError):  # it flushes what is pending
            stream.reconfigure(errors="backslashreplace")


def _interrupted(received: list[int], what: str = "") -> int:
    """Says the command was stopped; its exit code (130, SIGTERM 143)."""
    print(f"imgclass: interrupted{what}", file=sys.stderr)
    return EXIT_SIGTERM if signal.SIGTERM in received else EXIT_SIGINT


def _after_saving(saved: list) -> str:
    """What a command stopped after saving versions (``train``, ``models
    import``) adds to "interrupted": they are stored whole, and where
    ``latest`` is, as the stop may have come before it was pinned or
    moved (``--promote``)."""
    if not saved:
        return ""
    refs = ", ".join(info.ref for info in saved)
    return (f" after saving {refs}; the store is consistent"
            f"{_latest_now(saved[-1])}")


def _latest_now(info) -> str:
    """`` (NAME@latest is NAME@V)``, or nothing if the store cannot say."""
    from model_store.store import resolve

    root = fs.split(fs.split(info.location)[0])[0]
    try:
        return f" ({info.name}@latest is {resolve(info.name, root=root).ref})"
    except Exception as error:
        if isinstance(error, ImgclassError) or fs.is_store_error(error):
            return ""
        raise


def run() -> None:
    """The ``imgclass`` command: :func:`main` with no garbage collections
    during start-up (:mod:`pipeline.collection`), then exit with its code
    (:func:`signals.exit_process`)."""
    collection.pause()
    signals.exit_process(main())


if __name__ == "__main__":
    run()
