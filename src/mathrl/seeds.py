"""The global random generators (Python's, numpy's, torch's CPU and CUDA ones): seeding them, and their state,
which checkpoints save and restore so that a resumed run draws what the uninterrupted one would have drawn.

The sampler does not use them (its streams are counter-based, ``counter_rng.py``); data order, initialisation,
dropout-free training steps and vLLM's start-up do."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
