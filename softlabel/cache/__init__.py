"""Offline teacher-logit cache: dense (fp16) or top-k sparse, memory-mapped, with a manifest.

Write one with ``softlabel-cache`` (or :class:`CacheWriter` / :func:`write_cache`), read
it with :meth:`TeacherCache.open` and :meth:`TeacherCache.lookup`. The format is
described in ``docs/teacher_cache.md``.
"""

from softlabel.cache.format import FORMAT_VERSION, Manifest, read_manifest
from softlabel.cache.guards import check_augmentation, inputs_fingerprint, open_for_datamodule
from softlabel.cache.reader import TeacherCache, reconstruct_topk_logits
from softlabel.cache.writer import CacheWriter, topk_logprobs, write_cache

__all__ = [
    "FORMAT_VERSION",
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
