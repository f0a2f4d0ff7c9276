"""Offline teacher-logit cache: dense (fp16) or top-k sparse (k ids, k log-probabilities and
the log tail mass per position), one or L positions per dataset item, memory-mapped, with a
manifest.

Write one with ``softlabel-cache`` (or :class:`CacheWriter` / :func:`write_cache`), read
it with :meth:`TeacherCache.open` and :meth:`TeacherCache.lookup`. The format is
described in ``docs/teacher_cache.md``.
"""

from softlabel.cache.format import FORMAT_VERSION, READABLE_VERSIONS, Manifest, read_manifest
from softlabel.cache.guards import check_augmentation, inputs_fingerprint, open_for_datamodule
from softlabel.cache.reader import TAIL_MODES, TeacherCache, reconstruct_topk_logits
from softlabel.cache.writer import CacheWriter, topk_logprobs, write_cache

__all__ = [
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "TAIL_MODES",
    "CacheWriter",
    "Manifest",
    "TeacherCache",
    "check_augmentation",
    "inputs_fingerprint",
    "open_for_datamodule",
    "read_manifest",
    "reconstruct_topk_logits",
    "topk_logprobs",
    "write_cache",
]
