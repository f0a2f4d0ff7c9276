"""Which documents a text corpus keeps (a seeded order, capped by count and bytes) and how
they split into train / val / test, by document."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from softlabel.data.splits import Split

__all__ = ["SPLITS", "select_documents", "split_documents"]

SPLITS = ("train", "val", "test")


def select_documents(
    count: int,
    load: Callable[[int], bytes | None],
    seed: int,
    max_documents: int | None = None,
    max_bytes: int | None = None,
) -> tuple[np.ndarray, list[bytes]]:
    """``(ids, documents)`` in the order of the permutation seeded by ``seed``.

    Documents are taken in that order (``load(i)``; ``None`` skips document ``i``) until
    ``max_documents`` are kept or the next one would bring the total past ``max_bytes``
    UTF-8 bytes: the kept set is the longest prefix within both caps, no document is cut.
    """
    order = np.random.default_rng(seed).permutation(count)
    ids: list[int] = []
    documents: list[bytes] = []
    total, capped = 0, False
    for i in order.tolist():
        if max_documents is not None and len(ids) == max_documents:
            break
        document = load(i)
        if document is None:
            continue
        if max_bytes is not None and total + len(document) > max_bytes:
            if not ids:
                raise ValueError(
                    f"max_bytes={max_bytes} keeps no document: the first of the seeded "
                    f"order has {len(document)} bytes; raise max_bytes"
                )
            capped = True
            break
        ids.append(i)
        documents.append(document)
        total += len(document)
    if max_documents is not None and len(ids) < max_documents and not capped:
        raise ValueError(f"max_documents={max_documents}; the corpus has only {len(ids)} documents")
    if not ids:
        raise ValueError("the corpus has no document")
    return np.asarray(ids, dtype=np.int64), documents


def split_documents(
    ids: np.ndarray, val_fraction: float, test_fraction: float, hint: str = ""
) -> Split:
    """Split document ids (already in seeded order) by position: the first
    ``round(test_fraction * n)`` are the test split, the next ``round(val_fraction * n)``
    validation, the rest train; each split sorted. A split left empty is an error."""
    n = len(ids)
    sizes = {"test": round(test_fraction * n), "val": round(val_fraction * n)}
    sizes["train"] = n - sizes["test"] - sizes["val"]
    fractions = {"val": f"val_fraction={val_fraction}", "test": f"test_fraction={test_fraction}"}
    for name in SPLITS:
        if sizes[name] < 1:
            change = (
                f"raise {fractions[name]}"
                if name != "train"
                else f"lower {fractions['val']} / {fractions['test']}"
            )
            raise ValueError(
                f"the {name} split has 0 documents ({sizes[name]} of {n}); {change} "
                f"or use more documents{hint}"
            )
    test, val, train = np.split(ids, [sizes["test"], sizes["test"] + sizes["val"]])
    return Split(train=np.sort(train), val=np.sort(val), test=np.sort(test))
