"""Isolation and atomicity: the session's caches live in pytest's folders, the end-of-session check catches what a
lost redirect writes, LR generation is all or nothing, Ctrl-C says how to resume, and `bench` says when it runs
another checkout's code."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    SESSION_FOLDERS,
    _source_digests,
    _tmp_offenders,
    isolation_changes,
    skipped_areas,
    user_folder_changes,
)
from PIL import Image

from bench.cli import main
from bench.cli.checkout import PACKAGE_ROOT, other_checkout_note
from bench.data.io import read_rgb
from bench.data.lr import GENERATED_MARKER, cached_lr_root, generate_lr, make_lr, make_lr_folder
from bench.data.paths import cache_dir
from bench.errors import DataError

REPO = Path(__file__).resolve().parents[1]
BENCH = [sys.executable, "-c", "import sys; from bench.cli import main; sys.exit(main(sys.argv[1:]))"]


# ------------------------------------------------------------------------------ the session's folders

def test_every_cache_and_temp_folder_points_into_pytest_basetemp(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    for name in SESSION_FOLDERS:
        assert Path(os.environ[name]).is_relative_to(base), name
    assert Path(tempfile.gettempdir()) == base / "tmp"  # in this process too, not only in subprocesses


def test_the_libraries_read_the_session_folders(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    import numba
    from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir
    assert Path(numba.config.CACHE_DIR) == base / "numba-cache"  # read once, when numba was imported
    assert Path(inductor_cache_dir()) == base / "inductor-cache"
    ray_utils = pytest.importorskip("ray._common.utils", reason="Ray is the optional extra `ray`")
    assert Path(ray_utils.get_default_ray_temp_dir()) == base / "tmp" / "ray"


HOME_WRITERS = """
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numba
plt.plot([0, 1]); plt.savefig(OUT + "/plot.png")   # matplotlib's font list
def add_one(x):
    return x + 1
numba.njit(cache=True)(add_one)(1)                  # a cached kernel (NUMBA_CACHE_DIR, else next to this file)
try:
    import onnxruntime as ort
    from onnx import TensorProto, helper
except ImportError:
    pass
else:                                               # onnxruntime's device id (~/.cache/Microsoft/DeveloperTools)
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "xy"]
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", io[:1], io[1:]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": np.ones(2, np.float32)})
"""


def test_a_subprocess_of_the_session_writes_nothing_into_home(tmp_path):
    # HOME is an empty folder for this subprocess: whatever appears there escaped the session's redirects
    # (before them, onnxruntime wrote ~/.cache/Microsoft/DeveloperTools/.onnxruntime/{deviceid,onnxruntime.db}).
    home = tmp_path / "home"
    home.mkdir()
    script = tmp_path / "writers.py"
    script.write_text(f"OUT = {str(tmp_path)!r}\n{HOME_WRITERS}")
    subprocess.run([sys.executable, str(script)], env={**os.environ, "HOME": str(home)}, cwd=tmp_path, check=True,
                   timeout=300)
    assert (tmp_path / "plot.png").is_file()
    assert list(home.rglob("*")) == []
    assert not (tmp_path / "__pycache__").exists()  # numba's index went to NUMBA_CACHE_DIR, not beside the script


# ------------------------------------------------------------------------------ the end-of-session check

def test_the_source_check_catches_numba_cache_files_but_not_bytecode(tmp_path):
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "mod.py").write_text("x = 1\n")
    (tmp_path / ".git").mkdir()
    before = {str(tmp_path): _source_digests(tmp_path)}
    cache = tmp_path / "pkg" / "__pycache__"
    (cache / "mod.cpython-311.pyc").write_bytes(b"bytecode")
    (cache / "mod._kernel-12.py311.nbi").write_bytes(b"index")
    (cache / "mod._kernel-12.py311.1.nbc").write_bytes(b"code")
    (tmp_path / ".git" / "index").write_bytes(b"git's own")
    os.utime(tmp_path / "pkg" / "mod.py", ns=(1, 1))  # touched, same content: no change
    changes = user_folder_changes(before, {str(tmp_path): _source_digests(tmp_path)})
    assert changes == [f"{cache / 'mod._kernel-12.py311.1.nbc'} (written)", f"{cache / 'mod._kernel-12.py311.nbi'} (written)"]
    (tmp_path / "pkg" / "mod.py").write_text("x = 2\n")
    changes = user_folder_changes(before, {str(tmp_path): _source_digests(tmp_path)})
    assert f"{tmp_path / 'pkg' / 'mod.py'} (modified)" in changes


def test_the_tmp_check_sees_only_new_offenders(tmp_path):
    for name in ("torchinductor_root", "tmp.keep"):
        (tmp_path / name).mkdir()
    (tmp_path / "numba_old").mkdir()
    before = {"tmp": {str(tmp_path): dict.fromkeys(map(str, (tmp_path / n for n in _tmp_offenders(tmp_path))), 1)}}
    # Another process's work: a new tmp folder, files inside an offender that existed, an offender removed.
    (tmp_path / "tmpq1w2e3").mkdir()
    (tmp_path / "torchinductor_root" / "ab").mkdir()
    (tmp_path / "numba_old").rmdir()
    (tmp_path / "bash_tool_1").mkdir()
    after = lambda: {"tmp": {str(tmp_path): dict.fromkeys(map(str, (tmp_path / n for n in _tmp_offenders(tmp_path))), 1)}}  # noqa: E731
    assert isolation_changes(before, after()) == []
    # What a lost redirect leaves: Ray's session folders, onnx's, inductor's for another user name.
    for name in ("ray", "onnx-export-1", "torchinductor_ci"):
        (tmp_path / name).mkdir()
    assert isolation_changes(before, after()) == [f"{tmp_path / n} (written)" for n in ("onnx-export-1", "ray",
                                                                                        "torchinductor_ci")]
    assert isolation_changes(before, after(), skip={"tmp"}) == []


def test_the_check_can_be_turned_off_by_area():
    assert skipped_areas(None) == set() and skipped_areas("0") == set()
    assert skipped_areas("1") is None
    assert skipped_areas("source, cache") == {"source", "cache"}


# ------------------------------------------------------------------------------ LR generation: all or nothing

def _png(path: Path, seed: int, size: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def hr_with_a_corrupt_image(tmp_path):
    hr = tmp_path / "Mine" / "HR"
    good = [_png(hr / "a.png", 0), _png(hr / "b.png", 1)]
    corrupt = hr / "z_corrupt.png"  # sorted last: the good ones are already converted when it fails
    corrupt.write_bytes(good[0].read_bytes()[:60])
    return good + [corrupt]


def test_a_corrupt_image_leaves_no_cached_lr_folder(hr_with_a_corrupt_image):
    root = cached_lr_root("Mine", hr_with_a_corrupt_image)
    with pytest.raises(DataError, match="z_corrupt.png is truncated or corrupt"):
        generate_lr(hr_with_a_corrupt_image, 2, root / "X2")
    assert not root.exists()  # neither X2 (with its GENERATED marker) nor the set's folder
    lr = cache_dir() / "lr"  # made by this call when no earlier test made it: then removed too
    assert not lr.exists() or not [p for p in lr.iterdir() if p.name.startswith(".")]  # no staging folder either


def test_a_corrupt_image_through_load_dataset_leaves_nothing(hr_with_a_corrupt_image, tmp_path):
    from bench.data.dataset import load_dataset
    with pytest.raises(DataError, match="z_corrupt.png"):
        load_dataset("Mine", 2, data_root=tmp_path)
    assert not cached_lr_root("Mine", hr_with_a_corrupt_image).exists()
    assert sorted(p.name for p in (tmp_path / "Mine").iterdir()) == ["HR"]


def test_make_lr_into_an_existing_folder_adds_nothing_on_failure(hr_with_a_corrupt_image, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="z_corrupt.png"):
        make_lr_folder(hr_with_a_corrupt_image[0].parent, 2, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Mine", "out"]


def test_generated_folder_is_complete_and_marked(tmp_path):
    hr = [_png(tmp_path / "HR" / f"{name}.png", seed, size=13) for seed, name in enumerate(["a", "b"])]
    out = tmp_path / "cache" / "lr" / "Mine-key" / "X2"
    written = generate_lr(hr, 2, out)
    assert written == [out / "ax2.png", out / "bx2.png"]
    assert sorted(p.name for p in out.iterdir()) == [GENERATED_MARKER, "ax2.png", "bx2.png"]
    for hr_path, lr_path in zip(hr, written):
        assert np.array_equal(read_rgb(lr_path), make_lr(read_rgb(hr_path), 2))
        assert read_rgb(lr_path).shape == (6, 6, 3)  # 13 modcropped to 12, then halved
    assert sorted(p.name for p in out.parent.iterdir()) == ["X2"]  # the staging folder is gone
    # Existing files are kept unless overwritten: a second call writes nothing.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    generate_lr(hr, 2, out)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_generate_lr_fills_an_existing_folder(tmp_path):
    hr = [_png(tmp_path / "HR" / f"{name}.png", seed) for seed, name in enumerate(["a", "b"])]
    out = tmp_path / "X2"
    generate_lr(hr[:1], 2, out)
    first = (out / "ax2.png").stat().st_mtime_ns
    generate_lr(hr, 2, out)
    assert sorted(p.name for p in out.iterdir()) == [GENERATED_MARKER, "ax2.png", "bx2.png"]
    assert (out / "ax2.png").stat().st_mtime_ns == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["HR", "X2"]


# ------------------------------------------------------------------------------ Ctrl-C during bench run

@pytest.fixture
def interrupted_run_matrix(monkeypatch):
    import bench.runner.execute

    def interrupt(matrix, options):
        raise KeyboardInterrupt
    monkeypatch.setattr(bench.runner.execute, "run_matrix", interrupt)


def test_ctrl_c_names_the_run_folder_and_the_resume_command(interrupted_run_matrix, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--matrix", "smoke", "--threads", "1", "--no-progress"]) == 130
    assert capsys.readouterr().err.splitlines() == [
        f"bench: interrupted; the cells finished so far are kept in {tmp_path / 'results' / 'smoke'}",
        f"bench: resume with: cd {shlex.quote(str(tmp_path))} && bench run --matrix smoke --threads 1 --no-progress"]


def test_ctrl_c_resume_command_leaves_force_out(interrupted_run_matrix, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--matrix", "smoke", "--force", "--out", "my run"]) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"bench: interrupted; the cells finished so far are kept in {tmp_path / 'my run'}"
    assert err[1] == f"bench: resume with: cd {shlex.quote(str(tmp_path))} && bench run --matrix smoke --out 'my run'"
    assert err[2].startswith("bench: (--force left out: it would recompute the cells this run finished")


def test_ctrl_c_in_other_commands_says_interrupted(monkeypatch, capsys):
    import bench.cli.methods_cmd

    def interrupt(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(bench.cli.methods_cmd, "run_list", interrupt)  # registered when main builds the parser
    assert main(["methods", "list"]) == 130
    assert capsys.readouterr().err == "bench: interrupted\n"


TINY = """\
name: tiny
models:
  - {name: imdn, scales: [2], weights: "imdn/IMDN_x{scale}.pth"}
datasets:
  - {name: Set5, crop: 32, max_images: 3}
bits: [4, 2]
methods: [minmax, percentile]
baselines: [fp, bicubic]
calibration: {n: 2, patch: 24, seed: 0}
latency: {runs: 1, lr_size: 16}
cost: {lr_size: 16}
"""


def test_sigint_then_the_printed_command_resumes(tmp_path, benchmark_root, weights_dir, train_root, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "tiny.yaml").write_text(TINY, encoding="utf-8")
    args = ["run", "--matrix", "tiny.yaml", "--out", "run", "--data-root", str(benchmark_root), "--weights-dir",
            str(weights_dir), "--calib", str(train_root), "--no-progress", "--threads", "1"]
    records = tmp_path / "run" / "records.jsonl"
    process = subprocess.Popen([*BENCH, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        if records.exists() and records.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be interrupted: " + process.stdout.read()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    done = records.read_text().count("\n")
    assert 2 <= done < 6
    assert err.splitlines()[-2:] == [
        f"bench: interrupted; the cells finished so far are kept in {tmp_path / 'run'}",
        f"bench: resume with: cd {shlex.quote(str(tmp_path))} && bench {shlex.join(args)}"]
    # The printed command (with `bench` as this interpreter) from the printed folder finishes the run.
    resumed = subprocess.run([*BENCH, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"6 cells: {6 - done} computed (0 errors), {done} already done" in resumed.stdout
    assert records.read_text().count("\n") == 6


# ------------------------------------------------------------------------------ another checkout's code

def _checkout(folder: Path, name: str = "sr-ptq-bench") -> Path:
    (folder / ".git").mkdir(parents=True)
    (folder / "pyproject.toml").write_text(f'[project]\nname = "{name}"\nversion = "0.1.0"\n')
    return folder


def test_bench_says_when_it_runs_another_checkouts_code(tmp_path, monkeypatch, capsys):
    clone = _checkout(tmp_path / "clone")
    (clone / "bench").mkdir()
    monkeypatch.chdir(clone / "bench")
    assert main(["methods", "list"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"bench: note: running the code in {PACKAGE_ROOT} (where the installed `bench` points), not the checkout "
        f"you are in, {clone}; to run that one, `pip install -e {clone}` or use its own environment"]
    assert out.startswith("method")  # the command itself runs as before


def test_no_note_in_the_packages_own_checkout_or_elsewhere(tmp_path):
    assert other_checkout_note(PACKAGE_ROOT / "bench" / "cli") is None
    assert other_checkout_note(tmp_path) is None  # in no checkout
    assert other_checkout_note(_checkout(tmp_path / "other", name="another-project")) is None
    assert other_checkout_note(_checkout(tmp_path / "clone"), package_root=tmp_path / "clone") is None
