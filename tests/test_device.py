"""``--device``: auto picks the CUDA GPU (a device map over several), else mps, else the CPU, with the dtype
that goes with it; explicit choices are checked. torch's device queries are patched for the GPU cases."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lexico_chat import device as device_module
from lexico_chat.device import Placement, select_device
from lexico_chat.errors import LexicoError


@pytest.fixture()
def machine(monkeypatch):
    """``machine(gpus, mps=False)`` makes torch report that many CUDA GPUs (and mps or not)."""

    def set_up(gpus: int, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(device_module, "_mps_available", lambda: mps)

    return set_up


@pytest.mark.parametrize(
    "gpus,mps,expected",
    [
        (0, False, Placement("cpu", torch.float32)),
        (0, True, Placement("mps", torch.float16)),
        (1, True, Placement("cuda:0", torch.bfloat16)),
        (4, False, Placement("cuda:0", torch.bfloat16, gpus=4)),
    ],
)
def test_auto(machine, gpus, mps, expected):
    machine(gpus, mps)
    assert select_device("auto") == select_device() == expected


def test_several_gpus_keep_the_device_map(machine):
    machine(2)
    placement = select_device("auto")
    assert placement.device_map == "auto" and placement.label == "cuda ×2 (device map)"
    one = select_device("cuda:1")
    assert (one.device, one.device_map, one.label) == ("cuda:1", None, "cuda:1")
    assert select_device("cuda").device == "cuda:0"


def test_explicit_dtype_and_cpu(machine):
    machine(1)
    assert select_device("cpu") == Placement("cpu", torch.float32)
    assert select_device("auto", torch.float16) == Placement("cuda:0", torch.float16)


@pytest.mark.parametrize(
    "gpus,spec,match",
    [
        (0, "cuda", "no CUDA GPU is visible"),
        (2, "cuda:2", "there are 2 CUDA GPUs (cuda:0 to cuda:1)"),
        (0, "mps", "no Apple GPU"),
        (0, "gpu", "--device must be one of auto, cpu, cuda, cuda:N, mps; got 'gpu'"),
    ],
)
def test_mistakes_name_the_flag(machine, gpus, spec, match):
    machine(gpus)
    with pytest.raises(LexicoError, match="--device") as err:
        select_device(spec)
    assert match in str(err.value)


def test_no_visible_gpu_selects_cpu():
    """With CUDA_VISIBLE_DEVICES empty, auto is the CPU (real torch, no patching)."""
    code = "from lexico_chat.device import select_device; p = select_device('auto'); print(p.device, p.dtype)"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    if torch.backends.mps.is_available():  # an Apple machine has no CUDA but its own GPU
        assert run.stdout.split() == ["mps", "torch.float16"]
    else:
        assert run.stdout.split() == ["cpu", "torch.float32"]
