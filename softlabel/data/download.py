"""Fetch official dataset files with a timeout, verify their published checksums and
install them atomically (a temporary name in the same directory, then ``os.replace``)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from softlabel._io import umask_mode

TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Resource:
    """One official file: where to get it and its published MD5."""

    filename: str
    url: str
    md5: str


_CIFAR_BASE = "https://www.cs.toronto.edu/~kriz/"
_MNIST_BASE = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# Published checksums of the official files (the same ones torchvision verifies).
RESOURCES: dict[str, tuple[Resource, ...]] = {
    "cifar10": (
        Resource(
            "cifar-10-python.tar.gz",
            _CIFAR_BASE + "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
        ),
    ),
    "cifar100": (
        Resource(
            "cifar-100-python.tar.gz",
            _CIFAR_BASE + "cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
        ),
    ),
    "mnist": tuple(
        Resource(name, _MNIST_BASE + name, md5)
        for name, md5 in (
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        )
    ),
    "fashion_mnist": tuple(
        Resource(name, _FASHION_BASE + name, md5)
        for name, md5 in (
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        )
    ),
}


def fetch_url(url: str, destination: Path, timeout: float = TIMEOUT_S) -> None:
    """Stream ``url`` into ``destination`` (the caller passes a temporary path)."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(destination, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def md5_of(path: Path) -> str:
    """Hex MD5 of a file, read in 1 MiB blocks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_resource(resource: Resource, root: Path) -> Path:
    """Download ``resource`` into ``root`` unless a verified copy is there; return its path.

    The file is written under a temporary name, checked against ``resource.md5`` and only
    then renamed; on any failure nothing is left behind.
    """
    root.mkdir(parents=True, exist_ok=True)
    target = root / resource.filename
    if target.is_file() and md5_of(target) == resource.md5:
        return target
    handle, temporary = tempfile.mkstemp(prefix=f".{resource.filename}.", suffix=".part", dir=root)
    os.close(handle)
    partial = Path(temporary)
    try:
        try:
            fetch_url(resource.url, partial, TIMEOUT_S)
        except (urllib.error.URLError, OSError) as error:
            raise RuntimeError(
                f"could not download {resource.url} ({error}); if this machine is offline, "
                f"fetch that file elsewhere and place it at {target}"
            ) from error
        actual = md5_of(partial)
        if actual != resource.md5:
            raise RuntimeError(
                f"checksum mismatch for {resource.filename}: md5 {actual}, "
                f"expected {resource.md5}; the file was discarded"
            )
        os.chmod(partial, umask_mode(0o666))  # mkstemp makes 0600
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def extract_tar(archive: Path, member_dir: str, root: Path) -> Path:
    """Extract the folder ``member_dir`` of ``archive`` into ``root`` atomically."""
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        with tarfile.open(archive) as tar:
            _extract_safely(tar, staging)
        extracted = staging / member_dir
        if not extracted.is_dir():
            raise RuntimeError(f"{archive} does not contain the folder {member_dir!r}")
        final = root / member_dir
        if final.exists():
            shutil.rmtree(final)
        os.replace(extracted, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _extract_safely(tar: tarfile.TarFile, destination: Path) -> None:
    """``extractall`` refusing absolute paths, ``..`` and links (the ``"data"`` filter)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(destination, filter="data")
        return
    for member in tar.getmembers():  # Python versions without extraction filters
        parts = Path(member.name).parts
        if member.name.startswith("/") or ".." in parts or member.issym() or member.islnk():
            raise RuntimeError(f"refusing to extract unsafe archive member {member.name!r}")
    tar.extractall(destination)
