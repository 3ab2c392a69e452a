"""Capture and restore the process's random-number generators (python, numpy, torch).

A checkpoint stores them so that a resumed run draws the same random numbers as an
uninterrupted one (dropout in the learner, anything seeded from the global RNGs). The
state is a JSON-able dict, so it can sit in `controller.json` next to the step counter:

    {"python": [version, [624 + 1 ints], gauss_next],
     "numpy":  {"bit_generator": "MT19937", "state": {"key": [624 ints], "pos": int},
                "has_gauss": int, "cached_gaussian": float},
     "torch":  base64 of `torch.get_rng_state()` (a uint8 tensor),
     "cuda":   [base64 per device] (only when CUDA is initialised)}
"""

from __future__ import annotations

import base64
import random

import numpy as np
import torch


def capture_rng_state() -> dict:
    """The global python / numpy / torch (and CUDA, if initialised) RNG states, JSON-able."""
    version, internal, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": [int(k) for k in np_state["state"]["key"]], "pos": int(np_state["state"]["pos"])},
            "has_gauss": int(np_state["has_gauss"]),
            "cached_gaussian": float(np_state["gauss"]),
        },
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    """Set the global RNGs to a `capture_rng_state()` result (missing parts are left alone)."""
    if "python" in state:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state({
            "bit_generator": s["bit_generator"],
            "state": {"key": np.asarray(s["state"]["key"], dtype=np.uint32), "pos": s["state"]["pos"]},
            "has_gauss": s["has_gauss"],
            "gauss": s["cached_gaussian"],
        })
    if "torch" in state:
        torch.set_rng_state(_unb64(state["torch"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()
