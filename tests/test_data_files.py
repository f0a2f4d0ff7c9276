"""On-disk formats (CIFAR pickles, idx files) written tiny into tmp_path, and the
verified download path with the network replaced by a local copy."""

import gzip
import hashlib
import io
import pickle
import shutil
import tarfile

import numpy as np
import pytest

from softlabel.data import cifar10, cifar100, download, fashion_mnist, mnist, read_idx

RNG = np.random.default_rng(0)


def _pickle(path, content):
    with open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=2)


def _cifar_batch(count, labels_key=b"labels", num_classes=10):
    data = RNG.integers(0, 256, size=(count, 3072), dtype=np.uint8)
    return {b"data": data, labels_key: RNG.integers(0, num_classes, count).tolist()}


def write_cifar10(root, per_batch=2):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": _cifar_batch(per_batch) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(per_batch)
    for name, batch in batches.items():
        _pickle(folder / name, batch)
    _pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return batches


def test_cifar10_reads_pickles_in_order_with_official_test_split(tmp_path):
    batches = write_cifar10(tmp_path)
    source = cifar10(tmp_path)
    assert source.X.shape == (12, 3, 32, 32) and source.input_shape == (3, 32, 32)
    order = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    expected_y = np.concatenate([batches[name][b"labels"] for name in order])
    np.testing.assert_array_equal(source.y, expected_y)
    first = batches["data_batch_1"][b"data"][0]
    # channel planes: the first 1024 bytes are red, row-major 32x32
    np.testing.assert_allclose(source.X[0, 0, 0, :], first[:32] / 255.0, atol=1e-6)
    np.testing.assert_allclose(source.X[0, 2, 31, 31], first[3071] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(source.test_index, np.arange(10, 12))
    assert source.classes[3] == "c3" and source.num_classes == 10


def test_cifar100_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = {
        b"data": RNG.integers(0, 256, (7, 3072), dtype=np.uint8),
        b"fine_labels": [0, 5, 99, 3, 3, 50, 1],
        b"coarse_labels": [0, 1, 19, 2, 2, 3, 4],
    }
    test = {
        b"data": RNG.integers(0, 256, (3, 3072), dtype=np.uint8),
        b"fine_labels": [7, 8, 9],
        b"coarse_labels": [5, 6, 7],
    }
    _pickle(folder / "train", train)
    _pickle(folder / "test", test)
    _pickle(
        folder / "meta",
        {
            b"fine_label_names": [b"f%d" % i for i in range(100)],
            b"coarse_label_names": [b"g%d" % i for i in range(20)],
        },
    )
    fine = cifar100(tmp_path)
    assert fine.num_classes == 100 and fine.X.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(fine.y, [0, 5, 99, 3, 3, 50, 1, 7, 8, 9])
    np.testing.assert_array_equal(fine.test_index, [7, 8, 9])
    coarse = cifar100(tmp_path, label="coarse")
    assert coarse.num_classes == 20 and coarse.y[2] == 19 and coarse.classes[0] == "g0"
    with pytest.raises(ValueError, match="label='mid'"):
        cifar100(tmp_path, label="mid")


def _idx_bytes(array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_idx(folder, compress, n_train=5, n_test=3):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": RNG.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": RNG.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": RNG.integers(0, 10, n_test),
    }
    for name, array in arrays.items():
        if compress:
            with gzip.open(folder / f"{name}.gz", "wb") as handle:
                handle.write(_idx_bytes(array))
        else:
            (folder / name).write_bytes(_idx_bytes(array))
    return arrays


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("reader", [mnist, fashion_mnist])
def test_idx_readers_gz_and_plain(tmp_path, compress, reader):
    arrays = write_idx(tmp_path, compress)
    source = reader(tmp_path)
    assert source.X.shape == (8, 1, 28, 28) and source.name == reader.__name__
    expected_x = np.concatenate(
        [arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"]]
    )
    np.testing.assert_allclose(source.X[:, 0] * 255.0, expected_x, atol=1e-4)
    expected_y = np.concatenate(
        [arrays["train-labels-idx1-ubyte"], arrays["t10k-labels-idx1-ubyte"]]
    )
    np.testing.assert_array_equal(source.y, expected_y)
    np.testing.assert_array_equal(source.test_index, [5, 6, 7])
    assert reader(tmp_path, flat=True).input_shape == (784,)


def test_idx_found_in_torchvision_layout_and_bad_magic_refused(tmp_path):
    write_idx(tmp_path / "MNIST" / "raw", compress=True)
    assert len(mnist(tmp_path)) == 8
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an unsigned-byte idx"):
        read_idx(bad)


def test_missing_files_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar10: missing .*data_batch_1.*download=True"):
        cifar10(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match=r"mnist: missing .*train-images-idx3-ubyte"):
        mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        cifar100(tmp_path)


def _tiny_cifar10_archive(tmp_path):
    """A .tar.gz laid out like the official CIFAR-10 archive, and its MD5."""
    staging = tmp_path / "staging"
    write_cifar10(staging, per_batch=1)
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def _copying_fetch(source_path, calls):
    def fetch(url, destination, timeout=None):
        calls.append((url, timeout))
        shutil.copyfile(source_path, destination)

    return fetch


def test_download_verifies_checksum_and_extracts(tmp_path, monkeypatch):
    archive, md5 = _tiny_cifar10_archive(tmp_path)
    calls = []
    monkeypatch.setattr(download, "fetch_url", _copying_fetch(archive, calls))
    official = download.RESOURCES["cifar10"][0]
    monkeypatch.setitem(
        download.RESOURCES, "cifar10", (download.Resource(official.filename, official.url, md5),)
    )
    root = tmp_path / "data"
    source = cifar10(root, download=True)
    assert len(source) == 6 and calls[0][0] == official.url and calls[0][1] > 0
    assert sorted(p.name for p in root.iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]
    assert len(cifar10(root)) == 6  # now offline
    assert len(calls) == 1


def test_download_with_wrong_checksum_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    archive, _ = _tiny_cifar10_archive(tmp_path)
    monkeypatch.setattr(download, "fetch_url", _copying_fetch(archive, []))
    root = tmp_path / "data"
    with pytest.raises(RuntimeError, match="checksum mismatch.*c58f30108f718f92721af3b95e74349a"):
        cifar10(root, download=True)
    assert list(root.iterdir()) == []


def test_download_offline_gives_a_clear_error(tmp_path, monkeypatch):
    def offline(url, destination, timeout=None):
        destination.write_bytes(b"partial")
        raise OSError("network is unreachable")

    monkeypatch.setattr(download, "fetch_url", offline)
    with pytest.raises(
        RuntimeError, match=r"could not download .*train-images-idx3-ubyte.gz.*offline"
    ):
        mnist(tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


def test_archive_with_unsafe_member_is_refused(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(Exception):  # noqa: B017 - tarfile's filter error type varies by version
        download.extract_tar(archive, "cifar-10-batches-py", root)
    assert not (tmp_path / "escape.txt").exists() and list(root.iterdir()) == []


class _RunsCode:
    """Unpickling this would call os.system: the CIFAR reader must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    marker = tmp_path / "ran"
    with open(folder / "data_batch_1", "wb") as handle:
        pickle.dump({b"data": _RunsCode(marker), b"labels": [0]}, handle)
    with pytest.raises(
        ValueError, match=r"data_batch_1 is not a CIFAR batch file.*(posix|os)\.system"
    ):
        cifar10(root=tmp_path)
    assert not marker.exists()
