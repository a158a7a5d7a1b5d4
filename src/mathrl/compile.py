"""``--compile``: a model's training passes through ``torch.compile``, the parameters shared with the model.

Only the training passes (SFT's and the rounds' fine-tunes, the reward models', and the RL loops' learning step
with the passes before it: reference, old values): the sampler's KV-cache calls stay eager (compiling them would
mean recompiling for every cache length).
"""

from __future__ import annotations

import torch

from mathrl.models import block_class_names


def compiled(model) -> torch.nn.Module:
    """``model`` for training passes, with its transformer blocks compiled by ``torch.compile`` (what torch calls
    regional compilation). Shares the parameters, so the optimizer, checkpoints and the sampler keep using
    ``model`` itself.

    Why blocks and not the whole model: the blocks are identical, so one block is traced and compiled once for all
    of them. On the embedded default (2 CPU cores) a cold compile takes ~30 s instead of 50-60 s for the whole
    model, and an SFT step runs at ~0.8 of eager time, as with the whole model compiled (benchmarks/sft_step.py).
    Dynamic shapes: batches vary in length, and one graph for all lengths avoids a recompile per length. On CPU
    the compiled blocks use the plain matmul-softmax attention ("eager" in Hugging Face's terms), which inductor
    fuses; the SDPA kernel inside a compiled CPU graph ran at about half that speed. Same math; on
    CUDA the model's own attention is kept.

    Reproducible: two same-seed SFT runs, each compiling from an empty cache, ended with bit-identical weights. A
    whole-model compile was not (its graph holds the embedding's backward, which inductor's CPU code sums with
    parallel atomic adds, in varying order), so a model whose blocks cannot be found (``_no_split_modules`` names
    none) is compiled whole, faster but not bitwise reproducible. If compiling fails (say, no C++ compiler), the
    pass runs eagerly with a warning instead of failing the run."""
    import torch._dynamo  # noqa: F401 (imported here, not at the top: it takes a while and only --compile needs it)

    block_types = block_class_names(model)
    slots = [(parent, i) for parent in model.modules() if isinstance(parent, torch.nn.ModuleList)
             for i, child in enumerate(parent) if type(child).__name__ in block_types]
    return _Compiled(model, slots)


class _Compiled(torch.nn.Module):
    """Calls ``model`` with its blocks swapped for their compiled wrappers for the duration of the call (the
    autograd graph keeps what it needs for the backward pass), so the model itself is never left altered; with no
    blocks (``slots`` empty), calls the whole model compiled."""

    def __init__(self, model, slots):
        super().__init__()
        self.model = model
        self.mathrl_autocast = getattr(model, "mathrl_autocast", None)  # read by models.autocast
        self._slots = [(parent, i, parent[i], torch.compile(parent[i], dynamic=True)) for parent, i in slots]
        # in a tuple, so that the compiled whole model is not registered as a second copy of ``model``
        self._whole = () if slots else (torch.compile(model, dynamic=True),)
        on_cpu = next(model.parameters()).device.type == "cpu"
        self._attention = "eager" if on_cpu and slots else None

    @property
    def config(self):  # read by rollouts.forward_policy (the KV cache of a shared prompt is built from it)
        return self.model.config

    def forward(self, **kwargs):
        # suppress_errors: a compile that fails runs the pass eagerly with a warning instead of failing the run.
        # torch compiles lazily, inside the call, so the flag is set for these calls only and put back after: it is
        # a process-wide setting, and any other torch.compile in the process keeps torch's default (raise)
        with torch._dynamo.config.patch(suppress_errors=True):
            if self._whole:
                return self._whole[0](**kwargs)
            config = self.model.config
            attention = config._attn_implementation
            try:
                for parent, i, _, fast in self._slots:
                    parent[i] = fast
                if self._attention:
                    config._attn_implementation = self._attention
                return self.model(**kwargs)
            finally:
                config._attn_implementation = attention
                for parent, i, block, _ in self._slots:
                    parent[i] = block
