"""Executors: tasks grouped and ordered, the driver alone writing records (deduplicated), `--workers N` local
processes and Ray on a local two-node cluster giving the same records as the default in-process run, and
Ray's handling of a killed worker, a killed driver and a failing method cell."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.errors import ConfigError
from bench.runner.cells import Cell
from bench.runner.execute import RunOptions, run_matrix
from bench.runner.executors import ExecutorConfig
from bench.runner.executors.local import LocalExecutor
from bench.runner.matrix import Bits, DatasetSpec, MethodSpec, ModelSpec, load_matrix
from bench.runner.records import read_records
from bench.runner.tasks import BASELINES, CALIBRATION, RecordedTimes, make_tasks

BENCH = [sys.executable, "-c", "import sys; from bench.cli import main; sys.exit(main(sys.argv[1:]))"]
SMOKE_KEYS = ["imdn/x2/fp/FP/Set5[crop64]", "imdn/x2/bicubic/-/Set5[crop64]", "imdn/x2/minmax/W4A4/Set5[crop64]",
              "imdn/x2/dobi/W4A4/Set5[crop64]"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    # Workers run with --threads 1; the in-process reference must too, for bit-identical quantized PSNRs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


def _args(matrix: str | Path, out: Path, benchmark_root: Path, weights_dir: Path, train_root: Path) -> list[str]:
    return ["run", "--matrix", str(matrix), "--out", str(out), "--data-root", str(benchmark_root), "--weights-dir",
            str(weights_dir), "--calib", str(train_root), "--threads", "1", "--device", "cpu", "--no-progress"]


def _keyed(path: Path) -> dict[str, dict]:
    records = read_records(path / "records.jsonl")
    keyed = {r["key"]: r for r in records}
    assert len(keyed) == len(records), "a cell was written twice"
    return keyed


def _same_quality(records: dict[str, dict], reference: dict[str, dict]) -> None:
    assert sorted(records) == sorted(reference)
    for key, record in records.items():
        assert record["status"] == "ok", record["error"]
        assert (record["psnr"], record["ssim"]) == (reference[key]["psnr"], reference[key]["ssim"]), key
        assert record["fingerprint"] == reference[key]["fingerprint"], key


@pytest.fixture(scope="module")
def smoke_reference(tmp_path_factory, benchmark_root, weights_dir, train_root) -> dict[str, dict]:
    """The smoke matrix run the default way (in this process), one thread, on the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference") / "smoke"
    stats = run_matrix(load_matrix("smoke"), RunOptions(out=out, data_root=benchmark_root, weights_dir=weights_dir,
                                                        train_root=train_root, device="cpu", progress=False))
    assert (stats.computed, stats.errors, stats.calibrations) == (4, 0, 2)
    records = _keyed(out)
    assert {r["worker"] for r in records.values()} == {"local"} and {r["node"] for r in records.values()} == {None}
    yield records
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------- tasks (no data)

def _cell(method: str, bits: int | None, dataset: str, model: str = "imdn") -> Cell:
    spec = MethodSpec(method, method)
    return Cell(ModelSpec(model, (2,)), 2, spec, None if bits is None else Bits(bits, bits), DatasetSpec(dataset))


def test_tasks_group_one_calibration_with_its_evaluations():
    cells = [_cell("fp", 32, "Set5"), _cell("bicubic", None, "Set5"), _cell("minmax", 4, "Set5"),
             _cell("minmax", 4, "Set14"), _cell("minmax", 2, "Set5"), _cell("fp", 32, "Set14")]
    tasks = make_tasks(cells, {c: f"f{i}" for i, c in enumerate(cells)})
    assert [(t.kind, t.name, [c.dataset.name for c in t.cells], t.fingerprints) for t in tasks] == [
        (BASELINES, "imdn/x2/baselines", ["Set5", "Set5", "Set14"], ("f0", "f1", "f5")),
        (CALIBRATION, "imdn/x2/minmax/W4A4", ["Set5", "Set14"], ("f2", "f3")),
        (CALIBRATION, "imdn/x2/minmax/W2A2", ["Set5"], ("f4",))]


def test_estimates_come_from_the_runs_recorded_times():
    def record(key: str, calib: float | None, evaluation: float, status: str = "ok") -> dict:
        return {"key": key, "status": status, "calib_seconds": calib, "eval_seconds": evaluation}
    times = RecordedTimes([record("imdn/x2/dobi/W4A4/Set5", 10.0, 1.0), record("imdn/x2/dobi/W2A2/Set5", 14.0, 3.0),
                           record("rfdn/x4/emmse/W4A4/Set5", 7.0, 2.0),
                           record("imdn/x2/emmse/W4A4/Set5", 99.0, 99.0, status="error")])
    exact, other_bits, other_model = _cell("dobi", 4, "Set5"), _cell("dobi", 3, "Set5"), _cell("emmse", 4, "Set5")
    assert times.calibration(exact) == 10.0
    assert times.calibration(other_bits) == 12.0           # same method and model at other bits: their median
    assert times.calibration(other_model) == 7.0           # same method on another model (error records ignored)
    assert times.calibration(_cell("ptq4sr", 4, "Set5")) is None
    assert times.evaluation(_cell("minmax", 4, "Set5")) == 2.0  # same model, scale and dataset: median of 1 and 3
    assert times.evaluation(_cell("minmax", 4, "Set14")) is None
    [dobi3] = make_tasks([other_bits], {other_bits: "f"})
    assert times.task(dobi3) == 12.0 + 2.0 and times.task(dobi3, calibrates=False) == 2.0


def test_ray_tasks_are_submitted_longest_first_unknown_first():
    from bench.runner.tasks import longest_first
    cells = [_cell("minmax", 4, "Set5"), _cell("dobi", 4, "Set5"), _cell("ptq4sr", 4, "Set5"), _cell("emmse", 4, "Set5")]
    tasks = make_tasks(cells, {c: "f" for c in cells})
    times = RecordedTimes([{"key": "imdn/x2/minmax/W4A4/Set5", "status": "ok", "calib_seconds": 1.0, "eval_seconds": 1.0},
                           {"key": "imdn/x2/dobi/W4A4/Set5", "status": "ok", "calib_seconds": 9.0, "eval_seconds": 1.0},
                           {"key": "imdn/x2/emmse/W4A4/Set5", "status": "ok", "calib_seconds": 5.0, "eval_seconds": 1.0}])
    assert [t.name for t in longest_first(tasks, times)] == [
        "imdn/x2/ptq4sr/W4A4", "imdn/x2/dobi/W4A4", "imdn/x2/emmse/W4A4", "imdn/x2/minmax/W4A4"]


@pytest.mark.parametrize("config, message", [
    (ExecutorConfig("slurm"), "--executor slurm: use one of local, ray"),
    (ExecutorConfig(workers=0), "--workers 0: use a positive number of worker processes"),
    (ExecutorConfig(address="auto"), "--address auto is for --executor ray; add --executor ray or drop --address"),
    (ExecutorConfig(gpus_per_task=1), "--gpus-per-task is for --executor ray"),
    (ExecutorConfig("ray", workers=2, address="auto"), "--workers 2 with --address: the cluster's resources decide"),
])
def test_bad_executor_options_are_one_line(config, message):
    with pytest.raises(ConfigError) as info:
        config.check()
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------- driver: dedup on arrival

class _Twice(LocalExecutor):
    """Every event arrives twice, as after a retried task whose first result also came back."""

    def run(self, tasks, work):
        for task, event in super().run(tasks, work):
            yield task, event
            yield task, event


def test_a_cell_arriving_twice_is_written_once(tmp_path, monkeypatch, smoke_reference, benchmark_root, weights_dir,
                                               train_root):
    import bench.runner.execute as execute
    monkeypatch.setattr(execute, "open_executor", lambda config, device: _Twice())
    matrix = tmp_path / "smoke.yaml"  # the smoke matrix, saving its SR images (sent to the driver as bytes)
    matrix.write_text(load_matrix("smoke").path.read_text(encoding="utf-8") + "save_images: true\n", encoding="utf-8")
    out = tmp_path / "twice"
    stats = run_matrix(load_matrix(matrix), RunOptions(out=out, data_root=benchmark_root, weights_dir=weights_dir,
                                                       train_root=train_root, device="cpu", progress=False))
    assert (stats.computed, stats.calibrations) == (4, 2)
    assert [r["key"] for r in read_records(out / "records.jsonl")] == SMOKE_KEYS
    records = _keyed(out)
    _same_quality(records, smoke_reference)
    dobi = records["imdn/x2/dobi/W4A4/Set5[crop64]"]
    assert dobi["images_dir"] == "images/imdn_x2_dobi_W4A4_Set5_crop64"
    saved = sorted((out / dobi["images_dir"]).glob("*.png"))
    assert [p.stem for p in saved] == ["baby", "bird", "butterfly", "head", "woman"]
    from PIL import Image
    assert Image.open(saved[0]).size == (128, 128)  # 64x64 LR crops at x2


# ---------------------------------------------------------------------------------- --workers N processes

def test_workers_give_the_same_records(tmp_path, smoke_reference, benchmark_root, weights_dir, train_root, capsys):
    out = tmp_path / "workers"
    start = time.perf_counter()
    assert main(_args("smoke", out, benchmark_root, weights_dir, train_root) + ["--workers", "2"]) == 0
    elapsed = time.perf_counter() - start
    assert "4 cells: 4 computed (0 errors), 0 already done; 2 calibrations run" in capsys.readouterr().out
    records = _keyed(out)
    _same_quality(records, smoke_reference)
    assert {r["worker"] for r in records.values()} <= {"worker 1/2", "worker 2/2"}
    assert all(r["device"] == "cpu (1 threads)" for r in records.values())
    assert len(list((out / "cache" / "bounds").glob("*.pt"))) == 2  # written by the driver from the workers' bytes
    # Resumed like any run: nothing left to do, and the cached calibrations are not sent out again.
    assert main(_args("smoke", out, benchmark_root, weights_dir, train_root) + ["--workers", "2"]) == 0
    assert "4 cells: 0 computed (0 errors), 4 already done" in capsys.readouterr().out
    print(f"\nsmoke with --workers 2: {elapsed:.1f} s")


# --------------------------------------------------------------------------------- Ray, two local nodes

@pytest.fixture(scope="module")
def ray_cluster(shared_dir):
    pytest.importorskip("ray", reason="Ray is the optional extra `ray`: pip install -e '.[ray]'")
    from ray.cluster_utils import Cluster
    store = 100 * 2**20
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False,
                                                            "object_store_memory": store})
    cluster.add_node(num_cpus=1, num_gpus=0, object_store_memory=store)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def _node_ids(cluster) -> set[str]:
    return {node.node_id for node in cluster.list_all_nodes()}


def test_ray_gives_the_same_records_on_both_nodes(ray_cluster, tmp_path, smoke_reference, benchmark_root, weights_dir,
                                                  train_root, capsys):
    out = tmp_path / "ray"
    args = _args("smoke", out, benchmark_root, weights_dir, train_root) + ["--executor", "ray", "--address",
                                                                          ray_cluster.address]
    assert main(args) == 0
    assert "4 cells: 4 computed (0 errors), 0 already done; 2 calibrations run" in capsys.readouterr().out
    records = _keyed(out)
    _same_quality(records, smoke_reference)
    assert {r["node"] for r in records.values()} == _node_ids(ray_cluster)  # both nodes did work
    assert all(r["device"] == "cpu (1 threads)" and r["host"] for r in records.values())


PLUGIN = '''
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from methods import PTQMethod, register_method
from methods.registry import create_method

ATTEMPTS = Path({attempts!r})


def attempt(name: str) -> int:
    """Counts the calls of a method across processes (one line per call)."""
    with open(ATTEMPTS / name, "a") as handle:
        handle.write(f"{{os.getpid()}}\\n")
    return len((ATTEMPTS / name).read_text().splitlines())


class _Base(PTQMethod):
    @dataclass(frozen=True)
    class Params:
        pass


@register_method("die-once-{tag}")
class DieOnce(_Base):
    """Kills its own worker process in the middle of its first calibration; MinMax otherwise."""

    def calibrate(self, qmodel, ctx):
        if attempt("die-once") == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        create_method("minmax").calibrate(qmodel, ctx)


@register_method("explode-{tag}")
class Explode(_Base):
    def calibrate(self, qmodel, ctx):
        attempt("explode")
        raise RuntimeError("calibration blew up")


@register_method("sleepy-{tag}")
class Sleepy(_Base):
    """Sleeps through its first calibration (the driver gets killed meanwhile); MinMax otherwise."""

    def calibrate(self, qmodel, ctx):
        if attempt("sleepy") == 1:
            time.sleep(120)
        create_method("minmax").calibrate(qmodel, ctx)
'''

MATRIX = """
name: {name}
models:
  - {{name: imdn, scales: [2], weights: "imdn/IMDN_x{{scale}}.pth"}}
datasets:
  - {{name: Set5, crop: 32, max_images: 2}}
bits: [4]
methods: [{methods}]
baselines: [{baselines}]
calibration: {{n: 2, patch: 24, seed: 0}}
latency: {{runs: 1, lr_size: 16}}
cost: {{lr_size: 16}}
"""


@pytest.fixture
def plugin(tmp_path) -> tuple[Path, str, Path]:
    """(plugin file, the unique suffix of its method names, the folder counting attempts)."""
    tag = f"t{os.getpid()}-{tmp_path.name}".replace("_", "-")
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    path = tmp_path / "ray_plugin.py"
    path.write_text(PLUGIN.format(attempts=str(attempts), tag=tag), encoding="utf-8")
    return path, tag, attempts


def _matrix(tmp_path: Path, name: str, methods: list[str], baselines: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(MATRIX.format(name=name, methods=", ".join(methods), baselines=baselines), encoding="utf-8")
    return path


def test_ray_retries_a_killed_worker_but_not_a_failing_cell(ray_cluster, tmp_path, plugin, benchmark_root, weights_dir,
                                                            train_root, capsys):
    plugin_file, tag, attempts = plugin
    matrix = _matrix(tmp_path, "faults", [f"die-once-{tag}", f"explode-{tag}", "minmax"], "fp")
    out = tmp_path / "faults"
    args = ["--plugin", str(plugin_file)] + _args(matrix, out, benchmark_root, weights_dir, train_root) + [
        "--executor", "ray", "--address", ray_cluster.address]
    assert main(args) == 1  # one cell failed
    assert "4 cells: 4 computed (1 errors), 0 already done" in capsys.readouterr().out
    assert [len((attempts / name).read_text().splitlines()) for name in ("die-once", "explode")] == [2, 1]
    lines = read_records(out / "records.jsonl")
    records = _keyed(out)  # every cell exactly once
    assert len(lines) == 4 and sorted(records) == sorted(f"imdn/x2/{m}/{b}/Set5[crop32,n2]" for m, b in [
        ("fp", "FP"), (f"die-once-{tag}", "W4A4"), (f"explode-{tag}", "W4A4"), ("minmax", "W4A4")])
    survived = records[f"imdn/x2/die-once-{tag}/W4A4/Set5[crop32,n2]"]
    failed = records[f"imdn/x2/explode-{tag}/W4A4/Set5[crop32,n2]"]
    minmax = records["imdn/x2/minmax/W4A4/Set5[crop32,n2]"]
    assert survived["status"] == "ok" and (survived["psnr"], survived["ssim"]) == (minmax["psnr"], minmax["ssim"])
    assert (failed["status"], failed["error"], failed["psnr"]) == ("error", "RuntimeError: calibration blew up", None)


def test_ray_run_with_a_killed_driver_resumes(ray_cluster, tmp_path, plugin, benchmark_root, weights_dir, train_root,
                                              capsys):
    plugin_file, tag, attempts = plugin
    matrix = _matrix(tmp_path, "killed", ["minmax", f"sleepy-{tag}"], "fp, bicubic")
    out = tmp_path / "killed"
    args = ["--plugin", str(plugin_file)] + _args(matrix, out, benchmark_root, weights_dir, train_root) + [
        "--executor", "ray", "--address", ray_cluster.address]
    driver = subprocess.Popen([*BENCH, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    records_file = out / "records.jsonl"
    while time.time() < deadline and driver.poll() is None:
        if (attempts / "sleepy").exists() and records_file.exists() and records_file.read_text().count("\n") >= 3:
            break
        time.sleep(0.1)
    assert driver.poll() is None, "the driver ended before it could be killed: " + driver.stdout.read().decode()
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    finished = {r["key"]: r for r in read_records(records_file)}
    assert len(finished) == 3 and f"imdn/x2/sleepy-{tag}/W4A4/Set5[crop32,n2]" not in finished

    assert main(args) == 0  # the same command again
    assert "4 cells: 1 computed (0 errors), 3 already done; 1 calibrations run" in capsys.readouterr().out
    records = _keyed(out)
    assert len(records) == 4 and all(records[key] == finished[key] for key in finished)  # nothing recomputed
    sleepy, minmax = records[f"imdn/x2/sleepy-{tag}/W4A4/Set5[crop32,n2]"], records["imdn/x2/minmax/W4A4/Set5[crop32,n2]"]
    assert sleepy["status"] == "ok" and (sleepy["psnr"], sleepy["ssim"]) == (minmax["psnr"], minmax["ssim"])
    assert len((attempts / "sleepy").read_text().splitlines()) == 2
