"""``make demo``: classify the shipped sample folder and show the results.

Runs the same command a user would (``imgclass classify``) on
``samples/digits`` into a temporary folder, then reads the Parquet files back
with pyarrow and prints the predictions and the error rows.
"""

from __future__ import annotations

import os
import sys
import tempfile

import pyarrow.parquet as pq

from pipeline.cli import main as imgclass

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "samples", "digits")


def show(output: str) -> None:
    predictions = pq.read_table(os.path.join(output, "predictions"))
    errors = pq.read_table(os.path.join(output, "errors"))
    rows = sorted(predictions.to_pylist(), key=lambda r: r["path"])
    right = 0
    print(f"\n{'file':<28} {'size':>7} {'label':>5} {'conf.':>6}  "
          f"{'runner-up':<9} expected")
    for row in rows:
        name = os.path.relpath(row["path"], SAMPLES)
        expected = os.path.basename(name).split("_")[0]
        right += expected == row["label"]
        second = row["top_k"][1]
        print(f"{name:<28} {row['width']:>3}x{row['height']:<3} "
              f"{row['label']:>5} {row['confidence']:>6.3f}  "
              f"{second['label']} {second['score']:.3f}   {expected}"
              f"{'' if expected == row['label'] else '  <- wrong'}")
    print(f"\n{right}/{len(rows)} labels match the digit in the file name")
    print(f"\n{errors.num_rows} error rows:")
    for row in sorted(errors.to_pylist(), key=lambda r: r["path"]):
        print(f"  {os.path.relpath(row['path'], SAMPLES):<22} "
              f"{row['stage']:<8} {row['error_type']}: {row['message']}")


def main() -> int:
    output = os.path.join(tempfile.mkdtemp(prefix="imgclass-demo-"), "out")
    code = imgclass(["classify", "--input", SAMPLES, "--output", output,
                     "--top-k", "3"])
    if code == 0:
        show(output)
        print(f"\nParquet output kept in {output}")
    return code


if __name__ == "__main__":
    sys.exit(main())
