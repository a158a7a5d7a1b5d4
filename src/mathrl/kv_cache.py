"""The sampler's key/value cache: a layer that writes in place, and attention that reads each prompt's keys and
values once for its K samples (cascade attention).

``PreallocatedLayer`` keeps keys/values in buffers sized for the final length: ``update`` writes the step in
place and returns views, instead of ``DynamicLayer``'s concatenation (which copies the whole cache every step:
64% of a decode step measured on CPU). It holds the prompt part in one of two ways:

- **replicated** (any cache layout): each row's buffer starts with its own copy of its prompt's keys/values;
- **shared** (``PreallocatedLayer.shared``; plain full attention only): the prompt keys/values are stored once
  per prompt slot, ``update`` returns the completion part only, and ``cascade_attention`` adds the prompt part,
  reading each prompt's keys once for its G rows instead of once per row.

What the attention function needs while a chunk decodes (the cache and the prompt padding bias) travels with the
forward call as the ``mathrl_cascade`` keyword (a ``Cascade``), which transformers passes to the attention
function: no module-level state.

Shapes: P = prompt slots, G = rows per slot, B = P x G rows (slot-major), Lp = prompt length (padded), t =
completion tokens so far, H / Hkv = query / key-value heads, D = head size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.cache_utils import DynamicLayer
from transformers.masking_utils import AttentionMaskInterface

CASCADE = "mathrl_cascade"  # the attention implementation's name, and the keyword its state travels under


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values live in buffers of ``capacity`` positions (see the module docstring).

    keys/values: (B, Hkv, n, D) to start the buffers with (replicated), or, with ``shared``, (P, Hkv, Lp, D) prompt
    keys/values stored once per slot and empty buffers of ``rows`` = B rows."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int, rows: int | None = None):
        super().__init__()
        shared = rows is not None
        self.prefix_k, self.prefix_v = (keys, values) if shared else (None, None)
        self.prefix_len = keys.shape[2] if shared else 0
        b, h, n, d = keys.shape
        b = rows if shared else b
        self.buf_k = keys.new_empty(b, h, capacity, d)
        self.buf_v = values.new_empty(b, values.shape[1], capacity, values.shape[-1])
        self.length = 0
        if not shared:
            self.buf_k[:, :, :n] = keys
            self.buf_v[:, :, :n] = values
            self.length = n
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._views()

    @classmethod
    def shared(cls, prefix_k: torch.Tensor, prefix_v: torch.Tensor, rows: int, capacity: int) -> "PreallocatedLayer":
        return cls(prefix_k, prefix_v, capacity, rows=rows)

    def _views(self) -> None:
        self.keys = self.buf_k[:, :, : self.length]
        self.values = self.buf_v[:, :, : self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        self.buf_k[:, :, self.length : self.length + n] = key_states
        self.buf_v[:, :, self.length : self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:  # DynamicLayer.get_mask_sizes reads it: prompt + completion positions
        return self.prefix_len + self.length

    def select(self, slots: torch.Tensor | None, rows: torch.Tensor) -> None:
        """Keep prompt slots ``slots`` (shared prompts) and rows ``rows`` (the running batch is repacked)."""
        if self.prefix_k is not None:
            self.prefix_k = self.prefix_k.index_select(0, slots)
            self.prefix_v = self.prefix_v.index_select(0, slots)
        self.buf_k = _rows_filled(self.buf_k, rows, self.length)
        self.buf_v = _rows_filled(self.buf_v, rows, self.length)
        self._views()


def _rows_filled(buf: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """buf (B, H, capacity, D) -> (len(rows), H, capacity, D) holding rows ``rows`` of the first ``n`` positions;
    the positions after them are left unwritten (the next steps write them). Copying only the filled part into the
    new buffer took 3 ms where ``buf.index_select(0, rows)`` of the whole buffer took 17 ms (960 -> 720 rows, 4
    heads x 96 positions x 32, one thread, n = 10-60): the full copy reads and writes the unfilled positions too."""
    out = buf.new_empty(len(rows), *buf.shape[1:])
    torch.index_select(buf[:, :, :n], 0, rows, out=out[:, :, :n])
    return out


@dataclass
class Cascade:
    """The state cascade attention reads during one decoding forward pass."""

    cache: object  # the DynamicCache whose layers are shared PreallocatedLayers
    prefix_bias: torch.Tensor  # (P, 1, 1, Lp) float: 0 on prompt tokens, -inf on left padding
    calls: int = 0  # attention calls seen (the sampler checks every layer was reached)


def cascade_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention of one new token per row over [its prompt (shared by G rows) ; its own completion].

    query (B, H, 1, D), key/value (B, Hkv, t, D) = the completion part; the prompt part comes from the layer.
    Both parts share one softmax (max-subtracted), so the result equals attention over the concatenation.
    """
    state: Cascade | None = kwargs.get(CASCADE)
    if state is None:
        raise RuntimeError(f"{type(module).__name__} does not pass the forward call's keywords to its attention "
                           "function; sample with shared_prefix_attention=False")
    layer = state.cache.layers[module.layer_idx]
    state.calls += 1
    b, h, q, d = query.shape
    p, hkv, lp, _ = layer.prefix_k.shape
    g, rep = b // p, h // hkv
    scaling = scaling if scaling is not None else d**-0.5
    qf = query.float()
    # prompt part, grouped by slot: (P, Hkv, G*rep, D) @ (P, Hkv, D, Lp) -> (P, Hkv, G*rep, Lp)
    qg = qf.reshape(p, g, hkv, rep, d).permute(0, 2, 1, 3, 4).reshape(p, hkv, g * rep, d)
    s_pre = torch.matmul(qg, layer.prefix_k.float().transpose(-1, -2)) * scaling + state.prefix_bias
    # completion part, per row: (B, Hkv, rep, D) @ (B, Hkv, D, t) -> (B, Hkv, rep, t)
    s_own = torch.matmul(qf.reshape(b, hkv, rep, d), key.float().transpose(-1, -2)) * scaling

    def to_rows(x):  # (P, Hkv, G*rep, ...) -> (B, Hkv, rep, ...)
        return x.reshape(p, hkv, g, rep, *x.shape[3:]).transpose(1, 2).reshape(b, hkv, rep, *x.shape[3:])

    def to_slots(x):  # (B, Hkv, rep, ...) -> (P, Hkv, G*rep, ...)
        return x.reshape(p, g, hkv, rep, *x.shape[3:]).transpose(1, 2).reshape(p, hkv, g * rep, *x.shape[3:])

    m = torch.maximum(to_rows(s_pre.amax(-1)), s_own.amax(-1))  # (B, Hkv, rep)
    e_pre = torch.exp(s_pre - to_slots(m).unsqueeze(-1))  # (P, Hkv, G*rep, Lp)
    e_own = torch.exp(s_own - m.unsqueeze(-1))  # (B, Hkv, rep, t)
    denom = to_rows(e_pre.sum(-1)) + e_own.sum(-1)  # (B, Hkv, rep)
    out = to_rows(torch.matmul(e_pre, layer.prefix_v.float())) + torch.matmul(e_own, value.float())  # (B,Hkv,rep,D)
    out = (out / denom.unsqueeze(-1)).reshape(b, h, q, d).to(query.dtype)
    return out.transpose(1, 2), None  # (B, 1, H, D), as HF attention functions return


def _no_mask(*args, **kwargs):
    return None  # cascade attention masks the prompt padding itself


# registered once, at import, under a name no model uses
AttentionInterface.register(CASCADE, cascade_attention)
AttentionMaskInterface.register(CASCADE, _no_mask)
