"""`download` against a local HTTP server on 127.0.0.1 serving archives the tests build."""

import hashlib
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import run_cli

from shared import download
from shared.data import load_dataset
from shared.errors import DataError


class ArchiveServer:
    """Serves `files` (name -> bytes) with Range support; `cut_next` cuts the next response
    short after that many bytes, as a dropped connection does."""

    def __init__(self):
        self.files, self.requests, self.cut_next = {}, [], None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                data, start = server.files[name], 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.cut_next is not None:
                    body, server.cut_next = body[: server.cut_next], None
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ArchiveServer()
    yield s
    s.close()


def _tar(path, members, mode="w"):
    """Write a tar of (source path, name in archive) pairs; returns its bytes."""
    with tarfile.open(path, mode) as tar:
        for source, name in members:
            tar.add(source, arcname=name)
    return path.read_bytes()


@pytest.fixture
def archives(sample, tmp_path):
    """The sample datasets packed the way the official archives are."""
    root, _ = sample
    dogs = root / "StanfordDogs"
    packed = tmp_path / "packed"
    packed.mkdir()
    return {
        "CUB_200_2011.tgz": _tar(packed / "CUB_200_2011.tgz",
                                 [(root / "CUB_200_2011", "CUB_200_2011")], "w:gz"),
        "images.tar": _tar(packed / "images.tar", [(dogs / "Images", "Images")]),
        "annotation.tar": _tar(packed / "annotation.tar", [(dogs / "Annotation", "Annotation")]),
        "lists.tar": _tar(packed / "lists.tar", [(dogs / f, f) for f in
                                                 ("file_list.mat", "train_list.mat",
                                                  "test_list.mat")]),
    }


def _serve_cub_with_its_checksum(monkeypatch, server, archives):
    server.files["CUB_200_2011.tgz"] = archives["CUB_200_2011.tgz"]
    md5 = hashlib.md5(archives["CUB_200_2011.tgz"]).hexdigest()
    monkeypatch.setitem(download.ARCHIVES, "bird",
                        (download.Archive(f"{server.url}/CUB_200_2011.tgz", md5),))


def _quiet(*args, **kwargs):
    pass


def test_cub_downloads_checks_and_extracts(sample, monkeypatch, server, archives, tmp_path):
    _serve_cub_with_its_checksum(monkeypatch, server, archives)
    root = tmp_path / "data"
    folder = download.download_dataset("bird", root, log=_quiet)
    assert folder == root / "CUB_200_2011"
    got, want = load_dataset("bird", root), load_dataset("bird", sample[0])
    assert [(r.key, r.label, r.boxes) for r in got.train + got.test] == \
        [(r.key, r.label, r.boxes) for r in want.train + want.test]
    assert sorted(p.name for p in root.iterdir()) == ["CUB_200_2011"]  # no archive, no staging


def test_dogs_download_from_a_mirror(sample, server, archives, tmp_path):
    server.files.update({k: v for k, v in archives.items() if k.endswith(".tar")})
    root = tmp_path / "data"
    download.download_dataset("dog", root, mirror=server.url + "/", log=_quiet)
    got, want = load_dataset("dog", root), load_dataset("dog", sample[0])
    assert [(r.key, r.label, r.boxes) for r in got.train + got.test] == \
        [(r.key, r.label, r.boxes) for r in want.train + want.test]
    assert sorted(p.name for p in root.iterdir()) == ["StanfordDogs"]


def test_checksum_mismatch_fails_and_keeps_nothing(server, archives, tmp_path):
    # Our archive is not the official one, so the official MD5 rejects it.
    server.files["CUB_200_2011.tgz"] = archives["CUB_200_2011.tgz"]
    root = tmp_path / "data"
    result = run_cli("-m", "shared.download", "--dataset", "bird", "--data-root",
                     str(root), "--mirror", server.url)
    assert result.returncode != 0
    assert "checksum mismatch" in result.stderr and "Traceback" not in result.stderr
    assert "97eceeb196236b17998738112f37df78" in result.stderr
    assert list(root.iterdir()) == []


def test_interrupted_download_resumes_where_it_stopped(sample, monkeypatch, server, archives,
                                                       tmp_path):
    _serve_cub_with_its_checksum(monkeypatch, server, archives)
    root = tmp_path / "data"
    server.cut_next = 5000
    with pytest.raises(DataError, match="run the same command again to resume"):
        download.download_dataset("bird", root, log=_quiet)
    assert not (root / "CUB_200_2011").exists()
    assert (root / "CUB_200_2011.tgz.part").stat().st_size == 5000

    download.download_dataset("bird", root, log=_quiet)
    assert server.requests[-1] == ("CUB_200_2011.tgz", "bytes=5000-")
    assert len(load_dataset("bird", root).test) == len(load_dataset("bird", sample[0]).test)
    assert sorted(p.name for p in root.iterdir()) == ["CUB_200_2011"]


def test_broken_archive_leaves_no_dataset(server, archives, tmp_path):
    # Dogs have no published checksum: a damaged archive is caught at extraction.
    server.files.update({k: v for k, v in archives.items() if k.endswith(".tar")})
    server.files["annotation.tar"] = archives["annotation.tar"][:20000]
    root = tmp_path / "data"
    with pytest.raises(DataError, match="annotation.tar: cannot extract"):
        download.download_dataset("dog", root, mirror=server.url, log=_quiet)
    assert not (root / "StanfordDogs").exists()
    assert sorted(p.name for p in root.iterdir()) == ["images.tar", "lists.tar"]

    server.files["annotation.tar"] = archives["annotation.tar"]  # fixed upstream: run again
    server.requests.clear()
    download.download_dataset("dog", root, mirror=server.url, log=_quiet)
    assert server.requests == [("annotation.tar", None)]  # the complete archives were kept
    assert len(load_dataset("dog", root).train) > 0


def test_archives_put_in_place_by_hand_need_no_network(monkeypatch, archives, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "CUB_200_2011.tgz").write_bytes(archives["CUB_200_2011.tgz"])
    with pytest.raises(DataError, match=r"CUB_200_2011.tgz: MD5 .* not the official archive"):
        download.download_dataset("bird", root, log=_quiet)  # the official MD5

    md5 = hashlib.md5(archives["CUB_200_2011.tgz"]).hexdigest()
    monkeypatch.setitem(download.ARCHIVES, "bird",
                        (download.Archive("http://127.0.0.1:9/CUB_200_2011.tgz", md5),))
    download.download_dataset("bird", root, log=_quiet)  # port 9: nothing to download from
    assert len(load_dataset("bird", root).train) > 0
