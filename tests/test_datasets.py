"""Test-set loading (BasicSR layout), LR generation and caching, the sample set, and bad inputs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.cli import main
from bench.data.dataset import load_dataset
from bench.data.imresize import imresize
from bench.data.io import list_images
from bench.data.lr import cached_lr_dir, hr_content_key, modcrop
from bench.data.paths import cache_dir
from bench.errors import DataError


def _copy_set(src_root: Path, dst_root: Path, name: str = "Set5", scales=(2,)) -> Path:
    """A writable copy of a set (HR + some LR scales) under dst_root."""
    shutil.copytree(src_root / name / "HR", dst_root / name / "HR")
    for s in scales:
        shutil.copytree(src_root / name / "LR_bicubic" / f"X{s}", dst_root / name / "LR_bicubic" / f"X{s}")
    return dst_root / name


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file and folder under `root` with its bytes: what "left unchanged" is checked against."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


def write_own_set(root: Path, name: str = "Mine") -> Path:
    """A user's own set (two seeded 48x36 HR photos, no LR) in a writable data root; needs no shared data."""
    rng = np.random.default_rng(0)
    for i in range(2):
        (root / name / "HR").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(root / name / "HR" / f"im{i}.png")
    return root / name


# ------------------------------------------------------------------------------------------ real sets

def test_set5_pairs_are_modcropped(benchmark_root):
    ds = load_dataset("Set5", 3, data_root=benchmark_root)
    assert len(ds) == 5 and ds.expected_count == 5 and not ds.is_subset and not ds.lr_generated
    shapes = {p.name: (p.hr.shape, p.lr.shape) for p in ds}
    # woman.png is 228x344: modcrop to x3 keeps 228x342 (LR 76x114).
    assert shapes["woman"] == ((342, 228, 3), (114, 76, 3))
    assert shapes["baby"] == ((510, 510, 3), (170, 170, 3))


def test_greyscale_bridge_becomes_rgb(benchmark_root):
    ds = load_dataset("Set14", 4, data_root=benchmark_root)
    assert len(ds) == 14
    bridge = ds[[e.name for e in ds.entries].index("bridge")]
    assert bridge.hr.shape == (512, 512, 3) and bridge.lr.shape == (128, 128, 3)
    assert np.array_equal(bridge.hr[..., 0], bridge.hr[..., 2])


def test_subset_gets_lr_generated_into_the_cache(benchmark_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    before = sorted(p.name for p in (benchmark_root / "Urban100").iterdir())
    ds = load_dataset("Urban100", 4, data_root=benchmark_root)
    assert (len(ds), ds.expected_count, ds.is_subset, ds.label) == (10, 100, True, "Urban100 (10/100)")
    key = hr_content_key(list_images(benchmark_root / "Urban100" / "HR"))
    assert ds.lr_generated and ds.lr_dir == tmp_path / "cache" / "lr" / f"Urban100-{key}" / "X4"
    # The data root is left untouched, whatever its permissions (the cache is used in every case).
    assert sorted(p.name for p in (benchmark_root / "Urban100").iterdir()) == before
    pair = ds[0]
    hr_full = np.asarray(Image.open(benchmark_root / "Urban100" / "HR" / f"{pair.name}.png").convert("RGB"))
    assert np.array_equal(pair.lr, imresize(modcrop(hr_full, 4), 0.25))


def test_writable_data_root_is_not_written_unless_write_lr(benchmark_root, tmp_path):
    root = tmp_path / "root"
    set_dir = _copy_set(benchmark_root, root, "Set5", scales=())
    before = snapshot(root)
    ds = load_dataset("Set5", 2, data_root=root)
    assert ds.lr_generated and ds.lr_dir == cached_lr_dir("Set5", list_images(set_dir / "HR"), 2)
    assert ds.lr_dir.is_relative_to(cache_dir()) and snapshot(root) == before
    names = [f"{n}x2.png" for n in ("baby", "bird", "butterfly", "head", "woman")]
    assert sorted(p.name for p in ds.lr_dir.glob("*.png")) == names
    # Generated with the MATLAB-exact bicubic: identical to the official Set5 LR.
    official = np.asarray(Image.open(benchmark_root / "Set5" / "LR_bicubic" / "X2" / "birdx2.png").convert("RGB"))
    assert np.array_equal(ds[1].lr, official)
    # Asked for, the LR goes into the set's own folder, with the GENERATED marker.
    in_place = load_dataset("Set5", 2, data_root=root, write_lr=True)
    assert in_place.lr_dir == set_dir / "LR_bicubic" / "X2" and (in_place.lr_dir / "GENERATED").is_file()
    assert sorted(p.name for p in in_place.lr_dir.glob("*.png")) == names
    assert np.array_equal(in_place[1].lr, official)


def test_a_run_over_a_writable_root_leaves_it_byte_for_byte_unchanged(tmp_path, capsys):
    root = tmp_path / "root"
    write_own_set(root)
    before = snapshot(root)
    for dataset in ("Mine", "sample"):  # a user's set without LR, and the embedded set (written on first use)
        args = ["eval", "--model", "fsrcnn", "--weights", "random", "--scale", "2", "--dataset", dataset,
                "--data-root", str(root), "--device", "cpu", "--no-lpips", "--json", "--threads", "1"]
        assert main(args) == 0
        assert json.loads(capsys.readouterr().out)["dataset"] == dataset
    matrix = tmp_path / "m.yaml"  # and `bench run` over the same root
    matrix.write_text("name: m\nmodels:\n  - {name: fsrcnn, scales: [3], weights: random}\n"
                      "datasets: [Mine, sample]\nbaselines: [fp, bicubic]\n", encoding="utf-8")
    assert main(["run", "--matrix", str(matrix), "--data-root", str(root), "--out", str(tmp_path / "run"),
                 "--device", "cpu", "--no-progress", "--threads", "1"]) == 0
    assert "4 cells: 4 computed (0 errors)" in capsys.readouterr().out
    assert snapshot(root) == before
    assert main(args[:8] + ["Mine", "--write-lr"] + args[9:]) == 0  # asked for: into the set's own folder
    assert sorted(p.name for p in (root / "Mine" / "LR_bicubic" / "X2").iterdir()) == ["GENERATED", "im0x2.png",
                                                                                       "im1x2.png"]
    lr_dir = cached_lr_dir("Mine", list_images(root / "Mine" / "HR"), 2)
    assert sorted(p.name for p in lr_dir.glob("*.png")) == ["im0x2.png", "im1x2.png"]
    assert (cache_dir() / "sample" / "HR" / "astronaut.png").is_file()


def test_generated_lr_is_keyed_by_hr_content(tmp_path):
    set_dir = write_own_set(tmp_path)
    first = load_dataset("Mine", 2, data_root=tmp_path)
    hr = set_dir / "HR" / "im1.png"
    Image.fromarray(255 - np.asarray(Image.open(hr))).save(hr)  # same name, other pixels
    second = load_dataset("Mine", 2, data_root=tmp_path)
    assert first.lr_dir != second.lr_dir and first.lr_dir.parent.name.startswith("Mine-")
    assert np.array_equal(second[1].lr, imresize(np.asarray(Image.open(hr)), 0.5))
    assert load_dataset("Mine", 2, data_root=tmp_path).lr_dir == second.lr_dir  # reused, not regenerated


def test_write_lr_into_a_read_only_folder_names_it(tmp_path, monkeypatch):
    set_dir = write_own_set(tmp_path)
    set_dir.chmod(0o555)
    try:
        with pytest.raises(DataError) as err:
            load_dataset("Mine", 2, data_root=tmp_path, write_lr=True)
        assert str(err.value) == (f"--write-lr: cannot write the generated LR into {set_dir / 'LR_bicubic' / 'X2'} "
                                  "(read-only); drop --write-lr (and BENCH_WRITE_LR) to have it generated into the "
                                  "cache instead")
        monkeypatch.setenv("BENCH_WRITE_LR", "1")  # the config key means the same
        with pytest.raises(DataError, match="--write-lr: cannot write"):
            load_dataset("Mine", 2, data_root=tmp_path)
    finally:
        set_dir.chmod(0o755)


def test_sample_set_is_materialised_offline(tmp_path):
    ds = load_dataset("sample", 3, data_root=tmp_path)
    assert [p.name for p in ds] == ["astronaut", "camera", "chelsea", "coffee", "rocket"]
    # Written into the cache, not into the data root.
    assert ds.root == cache_dir() / "sample" and not ds.is_subset and ds.expected_count == 5
    assert not (tmp_path / "sample").exists()
    pair = ds[1]
    assert pair.hr.shape == (240, 240, 3) and pair.lr.shape == (80, 80, 3)
    assert np.array_equal(pair.lr, imresize(pair.hr, 1 / 3))
    again = load_dataset("sample", 2, data_root=tmp_path)  # HR reused, new scale generated
    assert again[0].lr.shape == (120, 120, 3)


def test_data_check_lists_complete_and_subset_sets(benchmark_root, capsys):
    assert main(["data", "check", "--data-root", str(benchmark_root)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line and line.split()[0] in
            ("Set5", "Set14", "B100", "Urban100", "Manga109")}
    assert "complete" in rows["Set5"] and "5/5" in rows["Set5"] and "x2, x3, x4" in rows["Set5"]
    assert "complete" in rows["B100"] and "100/100" in rows["B100"]
    assert "subset (10 of 100)" in rows["Urban100"] and "subset (10 of 109)" in rows["Manga109"]


def test_make_lr_command_writes_official_lr(benchmark_root, tmp_path, capsys):
    out_dir = tmp_path / "X4"
    assert main(["data", "make-lr", "--hr", str(benchmark_root / "Set5" / "HR"), "--scale", "4",
                 "--out", str(out_dir)]) == 0
    assert "wrote 5 LR images" in capsys.readouterr().out
    for name in ("baby", "bird", "butterfly", "head", "woman"):
        ours = np.asarray(Image.open(out_dir / f"{name}x4.png"))
        official = np.asarray(Image.open(benchmark_root / "Set5" / "LR_bicubic" / "X4" / f"{name}x4.png"))
        assert np.array_equal(ours, official)


# ------------------------------------------------------------------------------------------ bad inputs

def test_truncated_png_names_the_file(benchmark_root, tmp_path):
    set_dir = _copy_set(benchmark_root, tmp_path)
    bird = set_dir / "HR" / "bird.png"
    bird.write_bytes(bird.read_bytes()[:3000])
    with pytest.raises(DataError) as err:  # found when the set is loaded (checksums), before any model runs
        load_dataset("Set5", 2, data_root=tmp_path)
    message = str(err.value)
    assert str(bird) in message and "truncated or corrupt" in message and "re-download" in message
    assert "\n" not in message
    lazy = load_dataset("Set5", 2, data_root=tmp_path, check_sizes_now=False)
    with pytest.raises(DataError, match="truncated or corrupt"):  # and again when decoded
        lazy[1]


def test_hr_lr_size_mismatch_names_both_files(benchmark_root, tmp_path):
    set_dir = _copy_set(benchmark_root, tmp_path)
    lr = set_dir / "LR_bicubic" / "X2" / "headx2.png"
    Image.open(lr).crop((0, 0, 100, 140)).save(lr)  # head HR is 280x280 -> its x2 LR is 140x140
    with pytest.raises(DataError) as err:
        load_dataset("Set5", 2, data_root=tmp_path)
    message = str(err.value)
    assert str(lr) in message and str(set_dir / "HR" / "head.png") in message and "re-download" in message


def test_missing_lr_folder_without_generation(benchmark_root, tmp_path):
    _copy_set(benchmark_root, tmp_path, scales=(2,))
    with pytest.raises(DataError) as err:
        load_dataset("Set5", 4, data_root=tmp_path, generate_lr=False)
    message = str(err.value)
    assert str(tmp_path / "Set5" / "LR_bicubic" / "X4") in message and "bench data make-lr" in message


def test_missing_lr_file_in_an_official_folder(benchmark_root, tmp_path):
    set_dir = _copy_set(benchmark_root, tmp_path)
    (set_dir / "LR_bicubic" / "X2" / "babyx2.png").unlink()
    with pytest.raises(DataError, match="babyx2.png is missing"):
        load_dataset("Set5", 2, data_root=tmp_path)


def test_unknown_and_absent_datasets(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("Set6", 2, data_root=tmp_path)
    assert "unknown dataset 'Set6'" in str(err.value) and "Set5, Set14, B100" in str(err.value)
    with pytest.raises(DataError) as err:
        load_dataset("B100", 2, data_root=tmp_path)
    assert str(tmp_path / "B100" / "HR") in str(err.value) and "--data-root" in str(err.value)


def test_a_users_own_folder_is_a_dataset(benchmark_root, tmp_path):
    shutil.copytree(benchmark_root / "Set5" / "HR", tmp_path / "Mine" / "HR")
    ds = load_dataset("Mine", 4, data_root=tmp_path)
    assert len(ds) == 5 and ds.expected_count is None and not ds.is_subset
