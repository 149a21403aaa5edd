"""Layout of one run directory, its lock, and the listing behind `bench results`.

    results/<run>/
        records.jsonl          one JSON line per evaluated cell (bench.runner.records)
        run.json               matrix name and path, first/last start time, commit, planned cell keys
        matrix.yaml            the matrix text of the latest `bench run`
        cache/bounds/*.pt      calibrated quantizers, one per (model, scale, method+params, bits)
        images/<cell>/*.png    SR outputs, when the matrix sets `save_images: true`
        .lock                  pid of the `bench run` writing here
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from bench.errors import ConfigError
from bench.runner.records import RECORDS_FILE, STATUS_OK, latest_by_key, read_records

DEFAULT_RESULTS_DIR = Path("results")


def safe_name(text: str) -> str:
    """A file-system-safe rendering of a cell or calibration key."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_")[:180]


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def records(self) -> Path:
        return self.path / RECORDS_FILE

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def matrix_copy(self) -> Path:
        return self.path / "matrix.yaml"

    def bounds_path(self, calib_key: str, fingerprint: str) -> Path:
        return self.path / "cache" / "bounds" / f"{safe_name(calib_key)}-{fingerprint}.pt"

    def images_dir(self, cell_key: str) -> Path:
        return self.path / "images" / safe_name(cell_key)

    def read_meta(self) -> dict:
        if not self.run_json.exists():
            return {}
        return json.loads(self.run_json.read_text(encoding="utf-8"))

    def write_meta(self, meta: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.run_json, json.dumps(meta, indent=2).encode())


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file then rename, so a kill never leaves a half-written file under `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def find_run(run: str | Path, results_dir: str | Path = DEFAULT_RESULTS_DIR) -> RunDir:
    """`--run R`: a run directory path, or a run name under the results directory."""
    for candidate in (Path(run), Path(results_dir) / str(run)):
        if (candidate / RECORDS_FILE).is_file():
            return RunDir(candidate)
    known = ", ".join(r.name for r in list_runs(results_dir)) or "none yet"
    raise ConfigError(f"no run {str(run)!r}: neither {run}/{RECORDS_FILE} nor {Path(results_dir) / str(run)}/"
                      f"{RECORDS_FILE} exists; runs in {results_dir}: {known} (create one with `bench run`)")


def list_runs(results_dir: str | Path = DEFAULT_RESULTS_DIR) -> list[RunDir]:
    root = Path(results_dir)
    if not root.is_dir():
        return []
    return sorted((RunDir(p) for p in root.iterdir() if (p / RECORDS_FILE).is_file()), key=lambda r: r.name)


PLANNED_KEY = "planned_cells"
FINISHED, INCOMPLETE, RUNNING, UNKNOWN = "finished", "incomplete", "running", "plan unknown"


def record_plan(meta: dict, cell_keys: list[str], same_matrix: bool, matrix_keys: list[str] | None = None) -> dict:
    """`meta` (run.json) with the cells planned: those of this `bench run`, plus those planned before when the
    matrix text is unchanged (so that `--only` slices add up to the whole matrix). When the matrix changed (a
    method or a block added, say), the earlier planned cells that the new matrix still names (`matrix_keys`, its
    cells before --only) stay planned too: adding to a matrix adds to its run."""
    earlier = meta.get(PLANNED_KEY) or []
    if not same_matrix:
        names = set(matrix_keys or ())
        earlier = [key for key in earlier if key in names]
    return {**meta, PLANNED_KEY: list(dict.fromkeys([*earlier, *cell_keys]))}


def matrix_change_note(run: RunDir, matrix_keys: list[str]) -> str | None:
    """What rerunning a run folder with an edited matrix does to its records, or None when there is nothing
    to say (a new folder, or every recorded cell is still in the matrix)."""
    recorded = latest_by_key(read_records(run.records))
    names = set(matrix_keys)
    gone = [key for key in recorded if key not in names]
    if not recorded or not gone:
        return None
    return (f"the matrix differs from the one last run in {run.path}: new cells are added to its records, cells "
            f"with the same key and settings are kept, and {len(gone)} recorded cell(s) the matrix no longer names "
            f"(e.g. {gone[0]}) stay in {RECORDS_FILE}, so `bench table` still shows them; use another --out for "
            f"a run of this matrix alone")


def run_summary(run: RunDir) -> dict:
    """Done / planned / errors of a run, from the latest record of each planned cell.

    `planned` is the plan of the `bench run`s of this matrix text (after --only); a killed run has done < planned. Runs
    written before plans were recorded have planned None, and count every recorded cell.
    """
    latest = latest_by_key(read_records(run.records))
    meta = run.read_meta()
    planned = meta.get(PLANNED_KEY)
    keys = list(latest) if planned is None else planned
    ok = sum(1 for k in keys if latest.get(k, {}).get("status") == STATUS_OK)
    errors = sum(1 for k in keys if k in latest and latest[k].get("status") != STATUS_OK)
    if RunLock(run).held_by_another():
        state = RUNNING
    elif planned is None:
        state = UNKNOWN
    else:
        state = FINISHED if ok + errors == len(planned) else INCOMPLETE
    return {"run": run.name, "path": str(run.path), "planned": None if planned is None else len(planned),
            "done": ok, "errors": errors, "missing": None if planned is None else len(planned) - ok - errors,
            "state": state, "models": sorted({r["model"] for r in latest.values()}),
            "matrix": meta.get("matrix_path", ""), "last_started": meta.get("last_started", "")}


class RunLock:
    """Refuses a second `bench run` on the same directory; a lock left by a killed run is taken over."""

    def __init__(self, run: RunDir) -> None:
        self.path = run.path / ".lock"

    def holder(self) -> int:
        """Pid written in the lock file (0 when there is none or it is unreadable)."""
        try:
            return int(self.path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def held_by_another(self) -> bool:
        pid = self.holder()
        return bool(pid) and pid != os.getpid() and _alive(pid)

    def __enter__(self) -> RunLock:  # noqa: PYI034
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            pid = self.holder()
            if self.held_by_another():
                raise ConfigError(f"{self.path.parent} is being written by another `bench run` (pid {pid}); "
                                  f"wait for it, or use --out to write elsewhere")
        self.path.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
