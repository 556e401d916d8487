"""``retain_freed_memory``: a freed tensor of a few MB stays in the process's heap instead of going back to the
system (checked with glibc's own ``mallinfo2`` in a fresh process, with and without the call), and loading a
model or building a cache on the CPU makes the call."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lexico_chat import heap

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or not heap.retain_freed_memory(), reason="glibc only")

_PROBE = """
import ctypes, json, sys
import torch
from lexico_chat.heap import retain_freed_memory

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
if sys.argv[1] == "retain":
    retain_freed_memory()
x = torch.ones(8 << 20, dtype=torch.uint8)  # one working tile of a few MB
held = libc.mallinfo2()
del x
freed = libc.mallinfo2()
print(json.dumps({"mapped_while_held": held.hblkhd, "heap_after_free": freed.arena}))
"""


def _probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@glibc
def test_freed_tiles_stay_in_the_heap():
    default, retained = _probe("default"), _probe("retain")
    assert default["mapped_while_held"] >= 8 << 20  # glibc's default: a separate mapping, unmapped when freed
    assert retained["mapped_while_held"] < 8 << 20  # taken from the heap ...
    assert retained["heap_after_free"] >= 8 << 20  # ... and kept there once freed


def test_cpu_cache_and_model_load_make_the_call(tiny_model, tmp_path, monkeypatch):
    from lexico_chat import models
    from lexico_chat.cache import cache as cache_module
    from tests.conftest import random_dictionary
    from tests.hf_cache import tiny_model_folder

    calls = []
    monkeypatch.setattr(cache_module, "retain_freed_memory", lambda: calls.append("cache"))
    monkeypatch.setattr(models, "retain_freed_memory", lambda: calls.append("load"))
    model = tiny_model("llama")
    cache_module.LexicoCache.from_model(model, random_dictionary(model))
    models.load_model(str(tiny_model_folder(tmp_path / "tiny")), device="cpu")
    assert calls == ["cache", "load"]
