"""Fetch and extract the official dataset archives (`python -m shared.download`).

An interrupted download stays as `<archive>.part` and resumes on the next run; an archive
appears under its own name only when complete (size, and MD5 where one is published).
Extraction goes to a hidden staging folder that is renamed into place only after the reader
accepts it, so an interruption never leaves a half dataset that looks complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

from shared.data import FOLDERS, read_cub, read_dogs
from shared.errors import DataError


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str | None  # the published checksum; Stanford publishes none for Dogs

    @property
    def filename(self) -> str:
        return Path(urlparse(self.url).path).name


ARCHIVES = {
    "bird": (Archive("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                     "97eceeb196236b17998738112f37df78"),),
    "dog": tuple(Archive(f"http://vision.stanford.edu/aditya86/ImageNetDogs/{name}", None)
                 for name in ("images.tar", "annotation.tar", "lists.tar")),
}
CHUNK = 1 << 20


def download_dataset(name: str, data_root, mirror: str | None = None, log=print) -> Path:
    """Download and extract one dataset into `<data_root>/<CUB_200_2011|StanfordDogs>`."""
    root = Path(data_root)
    target = root / FOLDERS[name]
    if target.exists():
        log(f"{target} already exists; remove it to download again", file=sys.stderr)
        return target
    root.mkdir(parents=True, exist_ok=True)
    archives = []
    for archive in ARCHIVES[name]:
        url = f"{mirror.rstrip('/')}/{archive.filename}" if mirror else archive.url
        archives.append(fetch(url, root / archive.filename, archive.md5, log))

    staging = root / f".{FOLDERS[name]}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for path in archives:
            extract(path, staging, log)
        # CUB's archive holds a CUB_200_2011/ folder; the Dogs archives unpack side by side.
        extracted = staging / FOLDERS[name] if name == "bird" else staging
        (read_cub if name == "bird" else read_dogs)(extracted)  # the layout must be complete
        os.replace(extracted, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for path in archives:
        path.unlink()
    log(f"{name}: extracted to {target}", file=sys.stderr)
    return target


def fetch(url: str, dest: Path, md5: str | None, log=print) -> Path:
    """Download `url` to `dest`, resuming a `.part` file left by an interrupted run."""
    if dest.exists():  # a finished download, or an archive the user put there by hand
        if md5 is not None and (got := file_md5(dest)) != md5:
            raise DataError(f"{dest}: MD5 {got}, published {md5}: not the official archive; "
                            "delete it and run the command again")
        return dest
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urlopen(request, timeout=60) as response:
            if have and response.status != 206:  # the server ignored the range: start over
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            progress = Progress(dest.name, total, have, log)
            with open(part, "ab" if have else "wb") as f:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    progress.update(len(chunk))
            progress.done()
    except HTTPError as e:
        if e.code == 416 and have:  # the .part is not a prefix the server can continue
            part.unlink()
            return fetch(url, dest, md5, log)
        raise DataError(f"{url}: the server answered {e.code} {e.reason}") from None
    except (URLError, OSError, http.client.HTTPException) as e:
        got = part.stat().st_size if part.exists() else 0
        raise DataError(f"{url}: download stopped after {got} bytes ({e!r}); run the same "
                        f"command again to resume from {part}") from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise DataError(f"{url}: got {size} of {total} bytes; run the same command again "
                        f"to resume from {part}")
    if md5 is not None:
        got = file_md5(part)
        if got != md5:
            part.unlink()
            raise DataError(f"{url}: checksum mismatch (MD5 {got}, published {md5}); the "
                            f"corrupt download was deleted, run the command again")
    os.replace(part, dest)
    return dest


def extract(archive: Path, dest: Path, log=print) -> None:
    log(f"extracting {archive.name}", file=sys.stderr)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")  # refuses absolute paths and links outside
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        archive.unlink()  # without a checksum, only deleting it forces a fresh download
        raise DataError(f"{archive}: cannot extract ({e}); the archive was deleted, run the "
                        "command again to download it anew") from None


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Progress:
    """Bytes, percent and speed: redrawn in place on a terminal, else a line every 10 s."""

    def __init__(self, name: str, total: int | None, done: int = 0, log=print):
        self.name, self.total, self.done_bytes, self.log = name, total, done, log
        self.start = self.last = time.monotonic()
        self.start_bytes = done
        self.tty = sys.stderr.isatty()

    def update(self, n: int) -> None:
        self.done_bytes += n
        now = time.monotonic()
        if now - self.last >= (0.2 if self.tty else 10):
            self.last = now
            self._show(end="\r" if self.tty else "\n")

    def done(self) -> None:
        self._show(end="\n")

    def _show(self, end: str) -> None:
        mb = self.done_bytes / 1e6
        rate = (self.done_bytes - self.start_bytes) / 1e6 / max(time.monotonic() - self.start,
                                                                1e-9)
        of = f" / {self.total / 1e6:.1f} MB ({100 * self.done_bytes / self.total:.0f}%)" \
            if self.total else " MB"
        self.log(f"{self.name}: {mb:.1f}{of}, {rate:.1f} MB/s", end=end, file=sys.stderr)


def main(argv=None) -> None:
    import argparse
    import json

    from shared.cli import DATASETS
    from shared.data import summary

    parser = argparse.ArgumentParser(prog="python -m shared.download",
                                     description="Fetch and extract a dataset's official "
                                                 "archives into --data-root.")
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--mirror", default=None,
                        help="base URL serving the same archive files (checksums still apply)")
    args = parser.parse_args(argv)
    try:
        folder = download_dataset(args.dataset, args.data_root, mirror=args.mirror)
        print(json.dumps(summary(args.dataset, folder.parent, 0.0)))
    except DataError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
