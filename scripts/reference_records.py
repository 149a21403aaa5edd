"""Convert the rows of the retired table scripts into run records of the matrix that now makes their table.

The reference tables in results/reference/ used to be written by one-off scripts (imdn_w4a4.py,
imdtn_table.py), which logged one JSON row per cell: model, scale, method, params, bits, dataset, psnr, ssim,
seconds, device (and commit, torch, reconstruction where they had them). Their tables are now matrices
(matrices/reference/) and the files are `bench table` output of a run folder (results/reference/runs/<name>).
The cells that were cheap to measure again were re-run with `bench run --only ...`; the fine-tuning cells
(hours on one CPU thread) keep the measured rows, converted here once:

    git show 1a2b3c4:results/reference/imdn-w4a4.jsonl > /tmp/rows.jsonl   # the rows as last committed
    python scripts/reference_records.py --rows /tmp/rows.jsonl --matrix reference/imdn-w4a4 \\
        --run results/reference/runs/imdn-w4a4 --weights-dir SHARED/weights --source "..."

Each row becomes the record of the matrix cell with the same model, scale, method, params, bits and dataset
(a row that matches no cell is an error), with the fingerprint `bench run` gives that cell, so that the run
folder is a complete run of the matrix: `bench run` into it computes nothing, `bench run --force --only ...`
measures a cell again. Cells that already have a record (re-measured) keep it. The records are written in
the matrix's cell order, one per cell, and `source` says where a converted record came from.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.runner.cells import Cell  # noqa: E402
from bench.runner.matrix import MatrixSpec, canonical_json, load_matrix  # noqa: E402
from bench.runner.plan import matrix_cells  # noqa: E402
from bench.runner.records import RECORDS_FILE, STATUS_OK, CellRecord, latest_by_key, read_records  # noqa: E402
from bench.runner.rundir import PLANNED_KEY, RunDir, write_atomic  # noqa: E402
from bench.runner.stages import describe_weights, weights_identity  # noqa: E402

# Names the scripts wrote for the baselines.
BASELINE_NAMES = {"FP32": "fp", "bicubic": "bicubic"}
# Whole test sets, as the scripts evaluated them.
IMAGES = {"Set5": 5, "Set14": 14}


def row_identity(row: dict, default_bits: int) -> tuple:
    """(model, scale, method, params, bits, dataset) of a script row; the IMDN script's W4A4 rows had no bits,
    the SwinIR scripts wrote them as "4/4"."""
    method = BASELINE_NAMES.get(row["method"], row["method"])
    if method == "fp":
        bits = (32, 32)
    elif method == "bicubic":
        bits = None
    else:
        b = row.get("bits") or default_bits
        bits = tuple(int(x) for x in b.split("/")) if isinstance(b, str) else (b, b)
    return row["model"], row["scale"], method, canonical_json(row.get("params") or {}), bits, row["dataset"]


def cell_identity(cell: Cell) -> tuple:
    bits = None if cell.bits is None else (cell.bits.w, cell.bits.a)
    return cell.model.name, cell.scale, cell.method.name, cell.method.params_json, bits, cell.dataset.label


def converted(row: dict, cell: Cell, matrix: MatrixSpec, run: RunDir, weights_dir: Path, source: str) -> dict:
    record = CellRecord(
        key=cell.key, fingerprint=cell.fingerprint(matrix, weights_identity(cell.model, cell.scale, weights_dir)),
        run=run.name, model=cell.model.name, scale=cell.scale, method=cell.method.name, label=cell.method.label,
        method_params=cell.method.params, w_bits=cell.bits.w if cell.bits else None,
        a_bits=cell.bits.a if cell.bits else None, dataset=cell.dataset.name, dataset_label=cell.dataset.label,
        status=STATUS_OK, images=IMAGES.get(cell.dataset.name, 0), expected_images=IMAGES.get(cell.dataset.name),
        psnr=row["psnr"], ssim=row["ssim"], calib_seconds=row.get("seconds"),
        method_description={k: row[k] for k in ("reconstruction", "notes") if row.get(k)} or None,
        weights=describe_weights(cell.model, cell.scale, weights_dir), device="cpu", device_name=row.get("device"),
        torch_version=row.get("torch"),
        git_commit=row.get("commit"), seed=matrix.seed, source=source)
    return json.loads(record.to_json())


def convert(rows: list[dict], matrix: MatrixSpec, run: RunDir, weights_dir: Path, source: str,
            default_bits: int = 4) -> tuple[int, list[str]]:
    """Write the run's records: its own where it has them, else the converted row. Returns (converted, keys of
    matrix cells with neither)."""
    cells = matrix_cells(matrix)
    by_identity = {cell_identity(c): c for c in cells}
    rows_by_key: dict[str, dict] = {}
    for number, row in enumerate(rows, start=1):
        cell = by_identity.get(row_identity(row, default_bits))
        if cell is None:
            raise SystemExit(f"row {number} ({row['method']} {row.get('params')} x{row['scale']} {row['dataset']}) "
                             f"is no cell of {matrix.path}; fix the matrix or leave the row out")
        rows_by_key[cell.key] = row  # a cell measured twice (the IMDN FP rows): the last row, as the scripts did
    have = latest_by_key(read_records(run.records))
    out, count = [], 0
    for cell in cells:
        if cell.key in have:
            out.append(have[cell.key])
        elif cell.key in rows_by_key:
            out.append(converted(rows_by_key[cell.key], cell, matrix, run, weights_dir, source))
            count += 1
    write_atomic(run.records, "".join(json.dumps(r) + "\n" for r in out).encode())
    meta = run.read_meta()
    meta.setdefault("name", matrix.name)
    meta[PLANNED_KEY] = [c.key for c in cells]
    if not run.matrix_copy.is_file():  # as `bench run` leaves it: a rerun with this matrix text adds to the plan
        write_atomic(run.matrix_copy, Path(matrix.path).read_bytes())
    path = Path(matrix.path).resolve()
    meta["matrix_path"] = str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)  # a committed folder
    run.write_meta(meta)
    return count, [c.key for c in cells if c.key not in have and c.key not in rows_by_key]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", required=True, type=Path, help="the script's .jsonl rows")
    ap.add_argument("--matrix", required=True, help="the matrix that makes the table (e.g. reference/imdn-w4a4)")
    ap.add_argument("--run", required=True, type=Path, help="the run folder (results/reference/runs/<name>)")
    ap.add_argument("--weights-dir", required=True, type=Path, help="as given to `bench run` (the fingerprints)")
    ap.add_argument("--source", required=True, help="where the rows came from (file, commit, script)")
    ap.add_argument("--default-bits", type=int, default=4, help="bits of rows that do not say (imdn_w4a4.py: 4)")
    ap.add_argument("--fill", action="append", default=[], metavar="FIELD=JSON",
                    help="a field the rows lack, e.g. --fill model='\"swinir-light\"' --fill scale=2 (repeatable)")
    args = ap.parse_args(argv)
    fill = {field: json.loads(value) for field, _, value in (item.partition("=") for item in args.fill)}
    rows = [{**fill, **json.loads(line)} for line in args.rows.read_text().splitlines() if line.strip()]
    count, missing = convert(rows, load_matrix(args.matrix), RunDir(args.run), args.weights_dir, args.source,
                             args.default_bits)
    print(f"{args.run / RECORDS_FILE}: {count} records converted from {args.rows}")
    for key in missing:
        print(f"no record and no row: {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
