"""How many rows a chunk holds: the cache-sized chunks of the chunk math and the
matrix-product-sized chunks of the linear head, per device type."""

from __future__ import annotations

import torch

from softlabel.kernels.modes import MODES
from softlabel.kernels.references import reference_kind
from softlabel.kernels.spec import LossSpec

#: Bytes of all (chunk_rows, K) arrays one chunk of the chunk math touches (inputs and work
#: buffers together), per device type. On CPU a chunk's arrays should stay in the last-level
#: cache between the dozen row passes a chunk makes: 32 MiB gives 52 rows for KD and 131 rows
#: for CE/LS/ReLoop at K = 32000 fp32, about 15% faster for KD than 8x larger chunks
#: (docs/performance.md, ``benchmarks/chunks.py``). On GPUs every op is a kernel launch, so
#: chunks are large there.
CHUNK_BYTES = {"cpu": 32 << 20, "cuda": 256 << 20}

#: Budget for device types not listed in ``CHUNK_BYTES``.
DEFAULT_CHUNK_BYTES = 256 << 20

#: Bytes of the (chunk_rows, V) and (chunk_rows, H) arrays of one chunk of the linear-head
#: loss per device type: the gradient, the logits (made in the gradient buffer itself where
#: the mode reads them only there) and a live teacher's logits. Each chunk streams the whole
#: V x H weight through three matrix products (logits, grad_h and the grad_W update), so the
#: chunk is sized for those products, and the chunk math runs on sub-chunks of
#: ``default_chunk_rows``. 256 MiB on CPU: 1971 rows for LS and 684 for KD at V = 32000,
#: H = 1024, fp32; 512 rows (the floor) at V = 128256, H = 2048. The CUDA figure is a choice,
#: not a measurement.
LINEAR_CHUNK_BYTES = {"cpu": 256 << 20, "cuda": 1 << 30}

#: Budget for device types not listed in ``LINEAR_CHUNK_BYTES``.
DEFAULT_LINEAR_CHUNK_BYTES = 256 << 20

#: Fewest rows per linear-head chunk (unless N is smaller). A chunk's products do about
#: chunk_rows multiply-adds per weight element they read or update, so short products cost
#: more per row: on CPU (2 threads) the LS loss of 1024 rows at H = 2048, V = 128256 took
#: 14.5 s in chunks of 256 rows, 14.6 s in chunks of 512 and 13.4 s in one chunk
#: (docs/performance.md, "Linear-head loss", chunk sizes). 512 is a choice within that
#: spread, as is the CUDA figure.
MIN_CHUNK_ROWS = {"cpu": 512, "cuda": 1024}


def _default_spec(mode: str) -> LossSpec:
    return LossSpec(mode, MODES[mode].defaults)


def arrays(spec: LossSpec) -> int:
    """(chunk_rows, K) arrays one chunk of the chunk math touches: the logits, a dense or
    head teacher's rows, the gradient and the mode's work buffers."""
    teacher = reference_kind(spec.teacher) in ("logits", "head")
    mode = MODES[spec.mode]
    return 1 + teacher + 1 + mode.work_buffers(spec) + mode.temporaries(spec)


def default_chunk_rows(
    num_classes: int,
    dtype: torch.dtype = torch.float32,
    mode: str = "ls",
    device: torch.device | str = "cpu",
    arrays: int | None = None,
) -> int:
    """Rows per chunk so the chunk's arrays hold about ``CHUNK_BYTES[device type]`` (>= 1 row).

    ``arrays``: the (chunk_rows, K) arrays one chunk touches (default: the mode's count with
    its default settings and a dense teacher where it reads one).
    """
    itemsize = 8 if dtype == torch.float64 else 4
    budget = CHUNK_BYTES.get(torch.device(device).type, DEFAULT_CHUNK_BYTES)
    if arrays is None:
        default = _default_spec(mode)
        teacher = 1 if MODES[mode].teacher else 0
        arrays = 1 + teacher + 1 + MODES[mode].work_buffers(default)
    return max(1, budget // (arrays * num_classes * itemsize))


def default_linear_chunk_rows(
    vocab_size: int,
    hidden_size: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    arrays: int = 2,
) -> int:
    """Rows per linear-head chunk: the chunk's ``arrays`` (rows, V) arrays (logits and
    gradient, plus a live teacher's logits) and two (rows, H) arrays hold about
    ``LINEAR_CHUNK_BYTES[device type]``, with at least ``MIN_CHUNK_ROWS[device type]`` rows."""
    itemsize = 8 if dtype == torch.float64 else 4
    kind = torch.device(device).type
    budget = LINEAR_CHUNK_BYTES.get(kind, DEFAULT_LINEAR_CHUNK_BYTES)
    per_row = (arrays * vocab_size + 2 * hidden_size) * itemsize
    return max(MIN_CHUNK_ROWS.get(kind, 1), budget // per_row, 1)
