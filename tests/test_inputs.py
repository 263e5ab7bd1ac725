"""Inputs that used to break a run (issue 9, items 6-11): odd names, special
files, compressed and oversized files, overlapping patterns, an output inside
an input, names with glob characters, what cannot be listed. Each run goes
through ``imgclass classify``; its output is read back with pyarrow."""

import errno
import gzip
import io
import json
import os
import threading
import urllib.parse

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from tests.conftest import traced_peak, write_digits
from tests.test_images import jpeg_claiming
from transforms import files, schema
from transforms.files import FileTooLargeError, escape_path, os_path, read_bytes

MAX_FILE_BYTES = 20_000
LATIN1_NAME = b"caf\xe9.png"  # "café.png" written in Latin-1


def table(output, kind):
    return pq.read_table(os.path.join(output, kind)).to_pylist()


def manifest(output):
    with open(os.path.join(output, "_manifest.json")) as handle:
        return json.load(handle)


def real_path(path):
    """The file a row's path names (README: paths are escaped)."""
    return os.fsdecode(urllib.parse.unquote_to_bytes(path))


def digit_png(split, index=0, size=32):
    from model_store.datasets import digit_image
    buffer = io.BytesIO()
    digit_image(split.test_images[index], size,
                Image.Resampling.BICUBIC).save(buffer, "PNG")
    return buffer.getvalue()


def check_exactly_once(output):
    """Every row's file once, in one table; the counts add up."""
    predicted = [r["path"] for r in table(output, "predictions")]
    failed = [r["path"] for r in table(output, "errors")]
    assert len(set(predicted)) == len(predicted)
    assert len(set(failed)) == len(failed)
    assert not set(predicted) & set(failed)
    counts = manifest(output)["counts"]
    assert counts["matched"] == counts["predicted"] + counts["failed"] + \
        counts["skipped"]
    assert (counts["predicted"], counts["failed"]) == (len(predicted),
                                                       len(failed))
    return set(predicted), {r["path"]: r for r in table(output, "errors")}


def run_guarded(args, seconds=240):
    """Runs the command line in a thread; a run that hangs fails the test
    (the FIFO is then opened for writing, which releases the reader)."""
    result = {}
    args = [str(a) for a in args]
    thread = threading.Thread(target=lambda: result.update(code=main(args)),
                              daemon=True)
    thread.start()
    thread.join(seconds)
    return result.get("code", "hung"), thread


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, split):
    """One run over a folder of every kind of troublesome entry."""
    base = tmp_path_factory.mktemp("hostile")
    folder, output = base / "in", str(base / "out")
    good = write_digits(str(folder / "good"), split, 6, nested=False)
    elsewhere = write_digits(str(base / "elsewhere"), split, 2, seed=3,
                             nested=False)
    os.symlink(base / "elsewhere", folder / "linked")
    latin1 = os.path.join(os.fsencode(folder), LATIN1_NAME)
    with open(latin1, "wb") as handle:
        handle.write(digit_png(split, 1))
    (folder / "100%41.png").write_bytes(digit_png(split, 2))
    os.mkfifo(folder / "fifo.png")
    os.symlink("/dev/zero", folder / "zero.png")
    os.symlink(folder / "missing.png", folder / "dangling.png")
    os.symlink(folder / "self.png", folder / "self.png")
    (folder / "loop").mkdir()
    os.symlink(folder, folder / "loop" / "back")
    (folder / "digit.png.gz").write_bytes(gzip.compress(digit_png(split, 3)))
    noise = np.random.RandomState(0).randint(0, 256, (160, 160), np.uint8)
    Image.fromarray(noise).save(folder / "big.png")
    (folder / "attack.jpg").write_bytes(jpeg_claiming(7000, 7000))
    private = folder / "private"
    private.mkdir()
    (private / "hidden.png").write_bytes(digit_png(split, 4))
    real_scandir = os.scandir

    def scandir(path="."):  # the tests run as root: chmod 000 would not do
        if isinstance(path, str) and path == str(private):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_scandir(path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files.os, "scandir", scandir)
        code, thread = run_guarded(["classify", "--input", str(folder),
                                    "--output", output, "--max-file-bytes",
                                    MAX_FILE_BYTES])
    if thread.is_alive():
        fd = os.open(folder / "fifo.png", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(60)
    paths = {
        "good": set(good), "elsewhere": {
            os.path.join(str(folder / "linked"), os.path.basename(p))
            for p in elsewhere},
        "latin1": escape_path(os.fsdecode(latin1)),
        "percent": str(folder / "100%2541.png"),
        "fifo": str(folder / "fifo.png"), "zero": str(folder / "zero.png"),
        "dangling": str(folder / "dangling.png"),
        "self": str(folder / "self.png"), "loop": str(folder / "loop/back"),
        "gz": str(folder / "digit.png.gz"), "big": str(folder / "big.png"),
        "attack": str(folder / "attack.jpg"), "private": str(private)}
    return code, output, paths


def test_hostile_folder_run_finishes_and_each_entry_is_in_one_table(hostile):
    code, output, paths = hostile
    assert code == 0
    predicted, errors = check_exactly_once(output)
    want_predicted = paths["good"] | paths["elsewhere"] | {
        paths["latin1"], paths["percent"]}
    assert predicted == want_predicted
    assert set(errors) == {paths[k] for k in (
        "fifo", "zero", "dangling", "self", "loop", "gz", "big", "attack",
        "private")}
    assert manifest(output)["counts"]["matched"] == len(want_predicted) + 9


def test_a_name_that_is_not_utf8_gets_its_row_and_maps_back(hostile):
    """Item 6: the row's path is escaped; unquoting it gives the file."""
    code, output, paths = hostile
    assert code == 0
    rows = {r["path"]: r for r in table(output, "predictions")}
    row = rows[paths["latin1"]]
    assert row["path"].endswith("/caf%E9.png")
    assert os.fsencode(real_path(row["path"])).endswith(LATIN1_NAME)
    assert os.path.isfile(real_path(row["path"]))
    # A literal "%41" is escaped too, so that the mapping stays reversible.
    assert real_path(paths["percent"]).endswith("/100%41.png")
    assert os.path.isfile(real_path(paths["percent"]))
    ledger = pq.read_table(os.path.join(output, "_ledger")).column(
        "path").to_pylist()
    assert paths["latin1"] in ledger


def test_fifos_devices_and_special_files_are_read_errors(hostile):
    """Item 7: the run does not hang on a FIFO or read /dev/zero."""
    code, output, paths = hostile
    assert code == 0
    _, errors = check_exactly_once(output)
    for key, kind in (("fifo", "a FIFO"), ("zero", "a character device")):
        row = errors[paths[key]]
        assert (row["stage"], row["error_type"]) == ("read",
                                                     "NotRegularFileError")
        assert kind in row["message"]


def test_files_are_read_as_they_are_and_capped(hostile):
    """Item 8: no decompression by extension; --max-file-bytes."""
    code, output, paths = hostile
    assert code == 0
    _, errors = check_exactly_once(output)
    assert errors[paths["gz"]]["stage"] == "decode"
    big = errors[paths["big"]]
    assert (big["stage"], big["error_type"]) == ("read", "FileTooLargeError")
    assert f"{MAX_FILE_BYTES:,}" in big["message"]
    assert manifest(output)["settings"]["max_file_bytes"] == MAX_FILE_BYTES


def test_what_cannot_be_listed_is_an_error_row(hostile):
    """Item 11: unreadable folder, dangling symlink, symlink loops; and a
    symlinked folder is followed."""
    code, output, paths = hostile
    assert code == 0
    predicted, errors = check_exactly_once(output)
    assert paths["elsewhere"] <= predicted
    expected = {"private": ("PermissionError", "cannot list folder"),
                "dangling": ("FileNotFoundError", "dangling symlink"),
                "self": ("OSError", "symlink loop"),
                "loop": ("SymlinkLoopError", "symlink loop")}
    for key, (error_type, words) in expected.items():
        row = errors[paths[key]]
        assert (row["stage"], row["error_type"]) == ("read", error_type)
        assert words in row["message"]


def test_a_jpeg_claiming_a_larger_size_is_a_decode_error(hostile):
    """Item 12, through the pipeline."""
    code, output, paths = hostile
    assert code == 0
    _, errors = check_exactly_once(output)
    row = errors[paths["attack"]]
    assert (row["stage"], row["error_type"]) == ("decode", "ImageDecodeError")
    assert "7000x7000" in row["message"]


def test_reading_stops_after_max_bytes_whatever_the_size_says():
    """A file whose listed size is wrong (here /proc, which lists 0 bytes)
    is not read past the limit."""
    with pytest.raises(FileTooLargeError, match="more than 100"):
        read_bytes("/proc/self/maps", size=0, max_bytes=100)
    assert len(read_bytes("/proc/self/maps", size=0, max_bytes=10**6)) > 100


def test_escaping_is_reversible_for_every_byte():
    names = [bytes([b]) + b"x" for b in range(1, 256) if b != ord("/")]
    names += [b"%41", b"%%41", b"%\xe9", b"%4\xe9", b"%2541", b"50%off"]
    for name in names:
        escaped = escape_path(os.fsdecode(name))
        escaped.encode("utf-8")  # whatever reaches Parquet must encode
        assert urllib.parse.unquote_to_bytes(escaped) == name, name
        assert os.fsencode(os_path(escaped)) == name
    assert escape_path("/plain/name.png") == "/plain/name.png"


@pytest.fixture(scope="module")
def overlapping(tmp_path_factory, split):
    base = tmp_path_factory.mktemp("overlap")
    folder = str(base / "d")
    truth = write_digits(folder, split, 8, nested=False)
    literal = base / "lit" / "a[1].png"
    literal.parent.mkdir()
    literal.write_bytes(digit_png(split, 5))
    odd_folder = base / "photos[2026]"
    odd_folder.mkdir()
    (odd_folder / "x.png").write_bytes(digit_png(split, 6))
    output = str(base / "out")
    code = main(["classify", "--input", folder, "--input", folder,
                 "--input", os.path.join(folder, "*.png"),
                 "--input", os.path.join(folder, "*"),
                 "--input", str(literal), "--input", str(odd_folder),
                 "--output", output])
    return code, output, set(truth), {str(literal), str(odd_folder / "x.png")}


def test_a_file_matched_by_several_patterns_is_classified_once(overlapping):
    """Item 9."""
    code, output, truth, literal = overlapping
    assert code == 0
    predicted, errors = check_exactly_once(output)
    assert predicted == truth | literal and not errors
    assert manifest(output)["counts"]["matched"] == len(truth) + 2


def test_an_existing_path_with_glob_characters_is_taken_literally(
        overlapping):
    """Item 11: '[1]' in a file or folder name is not a character class."""
    code, output, _, literal = overlapping
    assert code == 0
    predicted, _ = check_exactly_once(output)
    assert literal <= predicted


def test_an_output_inside_an_input_is_never_read(tmp_path, split):
    """Item 10: an earlier run's files below the input are not matched."""
    folder = tmp_path / "in"
    truth = write_digits(str(folder), split, 4, nested=False)
    output = folder / "labels"
    (output / "predictions").mkdir(parents=True)
    pq.write_table(schema.PREDICTIONS.empty_table(),
                   output / "predictions" / "part-old.parquet")
    (output / "_manifest.json").write_text("{}")
    (output / "_SUCCESS").write_text("")
    (output / "_staging" / "r1").mkdir(parents=True)
    (output / "_staging" / "r1" / "left.parquet").write_bytes(b"PAR1")
    assert main(["classify", "--input", str(folder), "--output", str(output),
                 "--skip-done"]) == 0
    predicted, errors = check_exactly_once(str(output))
    assert predicted == set(truth) and not errors
    assert not any("/labels/" in p for p in pq.read_table(os.path.join(
        output, "_ledger")).column("path").to_pylist())
    assert manifest(str(output))["counts"]["matched"] == 4


@pytest.mark.parametrize("where", ["same", "inside", "glob inside"])
def test_an_input_that_is_the_output_or_inside_it_is_refused(tmp_path, cli,
                                                            split, where):
    output = tmp_path / "out"
    write_digits(str(output / "sub"), split, 2, nested=False)
    given = {"same": output, "inside": output / "sub",
             "glob inside": output / "sub" / "*.png"}[where]
    before = sorted(os.listdir(output))
    code, _, err = cli("classify", "--input", given, "--output", output)
    assert code == 2 and err.count("\n") == 1
    assert "is the output folder or inside it" in err
    assert sorted(os.listdir(output)) == before


def test_a_name_that_is_not_utf8_is_skipped_by_the_next_run(tmp_path, split):
    """The ledger holds the escaped path, and --skip-done finds it; the
    input folder's own name is not UTF-8 either."""
    folder = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"in\xff"))
    os.mkdir(folder)
    with open(os.path.join(os.fsencode(folder), LATIN1_NAME), "wb") as out:
        out.write(digit_png(split, 7))
    output = str(tmp_path / "out")
    for night in (1, 2):
        assert main(["classify", "--input", str(folder), "--output", output,
                     "--skip-done"]) == 0
        counts = manifest(output)["counts"]
        assert (counts["predicted"], counts["skipped"]) == (
            (1, 0) if night == 1 else (0, 1))
    assert manifest(output)["inputs"] == [escape_path(folder)]
    assert manifest(output)["inputs"][0].endswith("/in%FF")
    row = table(output, "predictions")[0]
    assert os.path.isfile(real_path(row["path"]))


def test_reading_a_file_holds_it_in_memory_once(tmp_path):
    """Peak memory per file is its size, not twice it (a 256 MB file must
    not cost 512 MB on top of the batch)."""
    path = tmp_path / "large.bin"
    size = 20 * 2**20
    path.write_bytes(os.urandom(size))
    data, peak = traced_peak(
        lambda: read_bytes(str(path), size=size, max_bytes=size))
    assert len(data) == size
    assert peak < 1.2 * size, peak


@pytest.fixture(scope="module")
def memstore():
    from tests.object_store import Bucket
    Bucket.reset({})
    return Bucket


def test_on_object_stores_the_empty_input_check_lists_one_match(memstore):
    """A bucket prefix of 1,000 objects: finding that an input matches
    something reads a listing entry or two (Beam's match reads one past
    its limit of 1), not the prefix."""
    from pipeline.inputs import unmatched

    memstore.objects = {f"memstore://b/in/{n:04d}.png": b"x"
                        for n in range(1000)}
    memstore.listed = 0
    out = "memstore://b/out"
    assert unmatched(["memstore://b/in", "memstore://b/in/*.png"], out) == []
    assert memstore.listed <= 2 * 2
    # A typo matches nothing (the prefix is listed whole, once).
    assert unmatched(["memstore://b/in/*.jpeg"], out) == [
        "memstore://b/in/*.jpeg"]
    # Objects in the output are never matched.
    memstore.objects = {"memstore://b/out/predictions/part-0.parquet": b"x"}
    assert unmatched(["memstore://b/*"], "memstore://b/out") == [
        "memstore://b/*"]


@pytest.mark.parametrize("pattern", ["**/*.png", "c/x*", "c/*", "*/x?b.png"])
def test_a_backslash_in_a_name_does_not_hide_it_from_a_glob(tmp_path, split,
                                                             pattern):
    """On POSIX a backslash is an ordinary character of a name: ``*`` and
    ``?`` match it (Beam's own pattern treats it as a separator)."""
    folder = tmp_path / "in" / "c"
    folder.mkdir(parents=True)
    names = ["x\\b.png", "xab.png"]
    for index, name in enumerate(names):
        (folder / name).write_bytes(digit_png(split, index))
    output = str(tmp_path / "out")
    assert main(["classify", "--input", str(tmp_path / "in" / pattern),
                 "--output", output]) == 0
    predicted, errors = check_exactly_once(output)
    assert not errors
    assert {real_path(p) for p in predicted} == {
        str(folder / n) for n in names}


def test_a_file_reached_through_symlinks_is_classified_once(tmp_path, split):
    """A symlinked folder beside the real one, and the link given as an
    input as well: one row per file, under its real path; a file only a
    link reaches keeps the link's path."""
    folder = tmp_path / "in"
    real = write_digits(str(folder / "real"), split, 3, nested=False)
    os.symlink(folder / "real", folder / "alias")
    os.symlink(folder / "real" / os.path.basename(next(iter(real))),
               folder / "one-link.png")
    outside = write_digits(str(tmp_path / "outside"), split, 1, seed=4,
                           nested=False)
    os.symlink(tmp_path / "outside", folder / "linked")
    output = str(tmp_path / "out")
    assert main(["classify", "--input", str(folder), "--input",
                 str(folder / "alias"), "--output", output]) == 0
    predicted, errors = check_exactly_once(output)
    assert not errors
    assert predicted == set(real) | {
        str(folder / "linked" / os.path.basename(p)) for p in outside}
    assert manifest(output)["counts"]["matched"] == 4
