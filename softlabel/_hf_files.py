"""Local Hugging Face files, checked before ``transformers`` reads them.

A model or tokenizer comes from a local directory (``save_pretrained``'s output) or a
``.gguf`` file (llama.cpp's format; ``transformers`` dequantizes it, with the ``gguf``
package). Two rules live here, for models and tokenizers alike:

- no code from a model directory ever runs: every ``from_pretrained`` gets
  ``trust_remote_code=False``, and a directory whose ``config.json`` or
  ``tokenizer_config.json`` declares ``auto_map`` (classes shipped as Python files) is
  refused with a message, before ``transformers`` could ask ``[y/N]`` on stdin;
- a GGUF file needs the ``gguf`` extra, and is named in every error with the setting that
  gave it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "GGUF_EXTRA",
    "GGUF_SUFFIX",
    "LOCAL",
    "check_no_custom_code",
    "gguf_architecture",
    "gguf_location",
    "is_gguf",
]

GGUF_SUFFIX = ".gguf"
#: what ``pip install`` needs for GGUF files (the optional extra's packages)
GGUF_EXTRA = ("gguf", "accelerate")
#: the keyword arguments of every ``from_pretrained``: local files, no custom code
LOCAL: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
#: files whose ``auto_map`` would make ``transformers`` import code from the directory
CODE_FILES = {"model": ("config.json",), "tokenizer": ("tokenizer_config.json", "config.json")}


def is_gguf(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a GGUF file (by its suffix, any case)."""
    return os.fspath(path).lower().endswith(GGUF_SUFFIX)


def gguf_location(path: str | os.PathLike, setting: str) -> tuple[str, str]:
    """``(directory, file name)`` of an existing GGUF file, after checking that the ``gguf``
    extra is installed; errors name ``setting``."""
    full = Path(path).expanduser().absolute()
    if not full.is_file():
        what = "is a directory" if full.is_dir() else "does not exist"
        raise FileNotFoundError(f"{setting}={os.fspath(path)!r}: {str(full)!r} {what}")
    missing = [name for name in GGUF_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"{setting}={os.fspath(path)!r} is a GGUF file; reading it needs the "
            f"{' and '.join(missing)} package{'s' if len(missing) > 1 else ''}: "
            "pip install 'softlabel[gguf]'"
        )
    return str(full.parent), full.name


def gguf_architecture(path: str | os.PathLike, setting: str) -> str:
    """The file's ``general.architecture`` (e.g. ``llama``), read from its header; a
    ValueError naming ``setting`` when the file is no readable GGUF."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(os.fspath(path), "r").get_field("general.architecture")
        architecture = None if field is None else field.contents()
    except Exception as error:  # noqa: BLE001 - any failure means: not a GGUF we can read
        raise ValueError(
            f"{setting}={os.fspath(path)!r} is not a readable GGUF file "
            f"({type(error).__name__}: {str(error)[:200]})"
        ) from error
    if not isinstance(architecture, str) or not architecture:
        raise ValueError(f"{setting}={os.fspath(path)!r}: the GGUF file names no architecture")
    return architecture


def check_no_custom_code(directory: str | os.PathLike, setting: str, kind: str) -> None:
    """Refuse a ``kind`` ("model" or "tokenizer") directory that declares ``auto_map``:
    loading it would run Python code shipped in the directory."""
    for name in CODE_FILES[kind]:
        path = Path(directory) / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # transformers reports an unreadable file itself
        auto_map = config.get("auto_map") if isinstance(config, dict) else None
        if kind == "tokenizer" and name == "config.json" and isinstance(auto_map, dict):
            auto_map = {k: v for k, v in auto_map.items() if k == "AutoTokenizer"}
        if auto_map:
            raise ValueError(
                f"{setting}={os.fspath(directory)!r}: {path.name} declares auto_map "
                f"({', '.join(sorted(auto_map))}), classes shipped as code in the directory; "
                "softlabel never runs code from a model directory (trust_remote_code=False). "
                "Use a directory of an architecture transformers ships (if it is one, delete "
                f"auto_map from {path.name})"
            )
