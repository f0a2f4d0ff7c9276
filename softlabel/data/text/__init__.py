"""Text corpora for causal language models: documents from files (or the Python standard
library's sources), selected, split by document, tokenised and packed into blocks of
``block_size`` (``TextDataModule``).

``readers``: the files; ``stdlib``: the default corpus; ``selection``: which documents and
their split; ``packing``: blocks and their dataset; ``datamodule``: ``TextDataModule``.
"""

from softlabel.data.text.datamodule import TextDataModule
from softlabel.data.text.packing import IGNORE_INDEX, PackedBlocks, pack_documents
from softlabel.data.text.readers import expand_files, read_documents
from softlabel.data.text.selection import select_documents, split_documents
from softlabel.data.text.stdlib import stdlib_sources

__all__ = [
    "IGNORE_INDEX",
    "PackedBlocks",
    "TextDataModule",
    "expand_files",
    "pack_documents",
    "read_documents",
    "select_documents",
    "split_documents",
    "stdlib_sources",
]
