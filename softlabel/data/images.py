"""Readers for the standard on-disk image formats: the CIFAR python pickles and the
MNIST / Fashion-MNIST idx files (gzipped or not), with optional verified download."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from softlabel.data import download as _download
from softlabel.data.source import ArraySource

_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
_CIFAR100_FILES = ("train", "test", "meta")
_IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_SUBDIRS = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw"}


def _missing_error(dataset: str, missing: list[Path], hint: str) -> FileNotFoundError:
    listed = ", ".join(str(path) for path in missing)
    return FileNotFoundError(
        f"{dataset}: missing {listed}. Pass download=True to fetch the official files "
        f"(needs internet), or {hint}"
    )


#: The only globals a CIFAR pickle needs: numpy arrays (and their dtypes) and bytes. Anything else,
#: such as ``os.system`` in a crafted file, is refused before it is called.
_CIFAR_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles write bytes objects
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals of ``_CIFAR_PICKLE_GLOBALS``."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR batch file holds only numpy "
                "arrays, lists, bytes and numbers"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """Load a CIFAR pickle; keys come back as ``str`` (the official files use bytes).

    The CIFAR python format is a pickle, so it is read with an unpickler that resolves only
    numpy's array constructors: a file that would call anything else raises ValueError.
    """
    with open(path, "rb") as handle:
        try:
            content = _CifarUnpickler(handle, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            raise ValueError(f"{path} is not a CIFAR batch file: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path} is not a CIFAR batch file: it holds a {type(content).__name__}")
    return {
        key.decode() if isinstance(key, bytes) else key: value for key, value in content.items()
    }


def _names(values) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def _cifar_images(batch: dict) -> np.ndarray:
    """``(N, 3072)`` uint8 rows (R, G, B planes) -> ``(N, 3, 32, 32)`` float32 in [0, 1]."""
    data = np.asarray(batch["data"], dtype=np.uint8)
    return data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0


def _cifar_folder(name: str, root: str | Path, download: bool, required: tuple[str, ...]) -> Path:
    root = Path(root).expanduser()
    folder = root / _CIFAR_FOLDERS[name]
    missing = [folder / file for file in required if not (folder / file).is_file()]
    if not missing:
        return folder
    (resource,) = _download.RESOURCES[name]
    if not download:
        raise _missing_error(name, missing, f"download {resource.url} and extract it into {root}")
    archive = _download.download_resource(resource, root)
    _download.extract_tar(archive, _CIFAR_FOLDERS[name], root)
    return folder


def cifar10(root: str | Path, download: bool = False) -> ArraySource:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (``data_batch_1..5``, ``test_batch``,
    ``batches.meta``): 50,000 train + 10,000 test images ``(3, 32, 32)`` in [0, 1].

    The official test batch (indices 50000..59999) is the test split.
    """
    folder = _cifar_folder("cifar10", root, download, _CIFAR10_FILES)
    batches = [_unpickle(folder / name) for name in _CIFAR10_FILES[:-1]]
    X = np.concatenate([_cifar_images(batch) for batch in batches])
    y = np.concatenate([np.asarray(batch["labels"], dtype=np.int64) for batch in batches])
    num_train = len(y) - len(batches[-1]["labels"])
    return ArraySource(
        name="cifar10",
        X=X,
        y=y,
        num_classes=10,
        input_shape=(3, 32, 32),
        test_index=np.arange(num_train, len(y)),
        classes=_names(_unpickle(folder / "batches.meta")["label_names"]),
    )


def cifar100(root: str | Path, download: bool = False, label: str = "fine") -> ArraySource:
    """CIFAR-100 from ``root/cifar-100-python`` (``train``, ``test``, ``meta``).

    ``label="fine"`` gives 100 classes, ``label="coarse"`` the 20 superclasses. The official
    test file is the test split.
    """
    if label not in ("fine", "coarse"):
        raise ValueError(f"label={label!r}; allowed: 'fine', 'coarse'")
    folder = _cifar_folder("cifar100", root, download, _CIFAR100_FILES)
    train, test = _unpickle(folder / "train"), _unpickle(folder / "test")
    key = f"{label}_labels"
    y = np.concatenate([np.asarray(train[key]), np.asarray(test[key])]).astype(np.int64)
    names = _names(_unpickle(folder / "meta")[f"{label}_label_names"])
    return ArraySource(
        name="cifar100" if label == "fine" else "cifar100_coarse",
        X=np.concatenate([_cifar_images(train), _cifar_images(test)]),
        y=y,
        num_classes=len(names),
        input_shape=(3, 32, 32),
        test_index=np.arange(len(train[key]), len(y)),
        classes=names,
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (``.gz`` or plain): big-endian header, magic ``0x0000 08 ndim``
    for unsigned bytes, then ``ndim`` uint32 sizes, then the data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file (magic {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape)


def _find_idx(name: str, root: Path) -> dict[str, Path] | None:
    """Paths of the four idx files in ``root`` or ``root/<torchvision raw dir>``, or None."""
    for folder in (root, root / _IDX_SUBDIRS[name]):
        found = {}
        for key, stem in _IDX_NAMES.items():
            candidates = [folder / stem, folder / f"{stem}.gz"]
            existing = [path for path in candidates if path.is_file()]
            if existing:
                found[key] = existing[0]
        if len(found) == len(_IDX_NAMES):
            return found
    return None


def _idx_dataset(name: str, root: str | Path, download: bool, flat: bool) -> ArraySource:
    root = Path(root).expanduser()
    paths = _find_idx(name, root)
    if paths is None:
        if not download:
            urls = ", ".join(resource.url for resource in _download.RESOURCES[name])
            missing = [root / f"{stem}[.gz]" for stem in _IDX_NAMES.values()]
            raise _missing_error(name, missing, f"download {urls} into {root}")
        for resource in _download.RESOURCES[name]:
            _download.download_resource(resource, root)
        paths = _find_idx(name, root)
        if paths is None:
            raise RuntimeError(f"{name}: downloaded files in {root} could not be found again")
    train_images, test_images = read_idx(paths["train_images"]), read_idx(paths["test_images"])
    train_labels, test_labels = read_idx(paths["train_labels"]), read_idx(paths["test_labels"])
    if len(train_images) != len(train_labels) or len(test_images) != len(test_labels):
        raise ValueError(f"{name}: image and label files in {root} have different lengths")
    height, width = train_images.shape[1:]
    shape = (height * width,) if flat else (1, height, width)
    X = np.concatenate([train_images, test_images]).astype(np.float32) / 255.0
    return ArraySource(
        name=name,
        X=X.reshape((-1, *shape)),
        y=np.concatenate([train_labels, test_labels]).astype(np.int64),
        num_classes=10,
        input_shape=shape,
        image_shape=(1, height, width),
        test_index=np.arange(len(train_labels), len(train_labels) + len(test_labels)),
    )


def mnist(root: str | Path, download: bool = False, flat: bool = False) -> ArraySource:
    """MNIST from the idx files in ``root`` (``train-images-idx3-ubyte[.gz]``,
    ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``); images ``(1, 28, 28)`` in [0, 1]
    (``flat=True``: ``(784,)``). The official t10k files are the test split."""
    return _idx_dataset("mnist", root, download, flat)


def fashion_mnist(root: str | Path, download: bool = False, flat: bool = False) -> ArraySource:
    """Fashion-MNIST from idx files in ``root``; same layout and rules as :func:`mnist`."""
    return _idx_dataset("fashion_mnist", root, download, flat)
