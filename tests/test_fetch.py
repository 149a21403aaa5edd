"""models.fetch and `bench models`: download from a local HTTP server (hash checked, atomic), offline failure in
one attempt with a one-line error saying where to put the file, and the list's weights status."""
from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import urllib.request

import pytest
import torch

from bench.cli import main
from bench.errors import CheckpointError
from models import create_model
from models.cards import Card
from models.fetch import cached_weights_path, download, fetch_card, resolve_weights, weights_status

REFUSED = "http://127.0.0.1:9/IMDN_x2.pth"  # discard port: nothing listens, the connection is refused at once


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def payload(server):
    root, base = server
    data = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: more than one download chunk
    (root / "weights.bin").write_bytes(data)
    return data, hashlib.sha256(data).hexdigest(), f"{base}/weights.bin"


def test_download_verifies_the_hash_and_renames_atomically(payload, tmp_path):
    data, digest, url = payload
    dest = tmp_path / "cache" / "weights" / "w.bin"
    assert download(url, dest, sha256=digest) == dest
    assert dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["w.bin"]  # no temporary left behind


def test_hash_mismatch_names_file_and_both_hashes(payload, tmp_path):
    _, digest, url = payload
    dest = tmp_path / "dl" / "w.bin"
    wrong = "0" * 64
    with pytest.raises(CheckpointError) as info:
        download(url, dest, sha256=wrong)
    message = str(info.value)
    assert message == (f"w.bin downloaded from {url} has sha256 {digest}, expected {wrong}; the download was "
                       f"discarded: check the URL, or put the right file at {dest}")
    assert list(dest.parent.iterdir()) == []  # neither the file nor a temporary


def test_offline_fails_in_one_attempt(tmp_path, monkeypatch):
    calls = []
    real_urlopen = urllib.request.urlopen
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: calls.append(a) or real_urlopen(*a, **k))
    dest = tmp_path / "weights" / "IMDN_x2.pth"
    with pytest.raises(CheckpointError) as info:
        download(REFUSED, dest, sha256="0" * 64)
    assert len(calls) == 1  # no retry loop
    message = str(info.value)
    assert message.startswith(f"cannot download {REFUSED} (") and message.endswith(f"put it at {dest}")
    assert "\n" not in message and list(dest.parent.iterdir()) == []


def test_fetch_card_skips_a_verified_file(payload, tmp_path):
    _, digest, url = payload
    card = Card(model="toy", scale=2, file="toy_x2.bin", url=url, sha256=digest)
    first = fetch_card(card, cache=tmp_path)
    second = fetch_card(card, cache=tmp_path)
    assert first.downloaded and not second.downloaded
    assert first.path == second.path == tmp_path / "weights" / "toy_x2.bin"


def test_cli_fetch_then_create_model_uses_the_cache(server, weights_dir, tmp_path, monkeypatch, capsys):
    root, base = server
    (root / "IMDN_x2.pth").symlink_to(weights_dir / "imdn" / "IMDN_x2.pth")
    cache = tmp_path / "cache"
    monkeypatch.setenv("BENCH_CACHE", str(cache))
    assert weights_status("imdn", 2) == "missing"
    assert main(["models", "fetch", "imdn", "--scale", "2", "--url", f"{base}/IMDN_x2.pth"]) == 0
    dest = cache / "weights" / "IMDN_x2.pth"
    assert capsys.readouterr().out == f"IMDN_x2.pth: downloaded at {dest} (sha256 verified)\n"
    assert weights_status("imdn", 2) == "cached" and resolve_weights("imdn", 2).path == dest
    assert main(["models", "fetch", "imdn", "--scale", "2", "--url", f"{base}/IMDN_x2.pth"]) == 0
    assert "already cached" in capsys.readouterr().out
    official = create_model("imdn", 2, weights=weights_dir / "imdn" / "IMDN_x2.pth")
    assert all(torch.equal(a, b) for a, b in zip(create_model("imdn", 2).state_dict().values(),
                                                 official.state_dict().values()))
    assert main(["models", "list"]) == 0
    rows = {tuple(line.split()[:4]) for line in capsys.readouterr().out.splitlines()}
    assert ("imdn", "x2", "694,404", "cached") in rows and ("imdn", "x3", "703,059", "missing") in rows
    assert ("swinir-light", "x4", "929,628", "shipped") in rows


def test_cli_fetch_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    assert main(["models", "fetch", "imdn", "--scale", "2", "--url", REFUSED]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: error: cannot download {REFUSED}") and err.count("\n") == 1
    assert str(cached_weights_path(Card("imdn", 2, "IMDN_x2.pth", ""), tmp_path)) in err
    # CARN-M's three scales share one file, so --url needs no --scale (and fails here only for the network)
    assert main(["models", "fetch", "carn-m", "--url", REFUSED]) == 2
    assert "cannot download" in capsys.readouterr().err
    assert main(["models", "fetch", "imdn", "--url", REFUSED]) == 2
    assert "add --scale S" in capsys.readouterr().err
    assert main(["models", "fetch", "edsr"]) == 2
    assert "unknown model 'edsr'; known models:" in capsys.readouterr().err
    assert main(["models", "fetch", "rlfn", "--scale", "2"]) == 2
    assert "'rlfn' has no x2; its scales are 4" in capsys.readouterr().err
