"""Counter-based randomness for the sampler: the uniform number that picks the token at step t of sample j of a
prompt is a hash of (seed, prompt key, j, t) (splitmix64's finaliser over a blake2b key), so a sample depends on
its prompt and seed only, not on batching, chunking, ordering or the number of data-parallel ranks."""

from __future__ import annotations

import hashlib

import torch

_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)


def _shr(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def key_hash(seed: int, key: str, sample_index: int) -> int:
    """The int64 key of the random stream of sample ``sample_index`` of the prompt named ``key``."""
    h = hashlib.blake2b(f"{seed}\x00{key}\x00{sample_index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little", signed=True)


def uniforms(row_keys: torch.Tensor, step: int) -> torch.Tensor:
    """(B,) float64 uniforms in (0, 1), a pure function of (row key, step)."""
    offset = ((step + 1) * _GOLDEN) & ((1 << 64) - 1)
    x = _mix(row_keys + (offset - (1 << 64) if offset >= 1 << 63 else offset))
    return (_shr(x, 11).double() + 0.5) / float(1 << 53)
