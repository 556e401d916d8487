"""Forged and damaged session files against ``lexico-chat --resume`` (seeded, on tiny models).

Each forged file mutates one metadata field or one tensor of a good file (out-of-range and negative atom
indices, NaN / inf values, wrong shapes and dtypes, mismatched lengths, wrong types and huge numbers in the
metadata) and carries a valid checksum, as an attacker would write it; 100 more files have one random byte
flipped. Every one must be refused with one line on stderr and exit code 2: never a traceback, never
accepted. The good file still resumes token for token like the uninterrupted conversation.
"""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lexico_chat.config import CacheConfig
from lexico_chat.dictionary import LexicoDictionary
from lexico_chat.engine.options import SessionOptions
from lexico_chat.engine.session import ChatSession
from lexico_chat.engine.session_file import META_KEY, OLDER_SETTINGS, digest, read_session_file
from lexico_chat.engine.types import SamplingConfig
from tests.tiny_cli import FLAGS, assert_one_line_error, run_cli, save_dictionary, serve_tiny_model, tiny_loaded

TURN1 = "Tell me about the sea, the wind and the long roads home."
TURN2 = "Go on."
REPLY = ["--max-new-tokens", "6"]
pytestmark = pytest.mark.usefixtures("one_thread")
OPTIONS = SessionOptions(cache=CacheConfig(sparsity=4, atoms=64, buffer=16, window=8))


class World:
    """A tiny model, its dictionary and one good session file saved by the command line."""

    def __init__(self, folder, arch: str, flags: list[str], key_space: str = "pre_rope") -> None:
        self.loaded = tiny_loaded(arch)
        self.folder = folder
        self.flags = ["--dictionary", save_dictionary(self.loaded, folder, key_space), *flags]
        self.good = folder / "good.lexico"

    def cli(self, monkeypatch, capsys, *argv):
        serve_tiny_model(monkeypatch, self.loaded)
        return run_cli(capsys, *self.flags, *REPLY, *argv)

    def raw(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """A fresh copy of the good file's metadata (without its checksum) and tensors."""
        if not hasattr(self, "_raw"):
            with safe_open(str(self.good), framework="pt") as fh:
                meta = json.loads(fh.metadata()[META_KEY])
                self._raw = meta, {name: fh.get_tensor(name) for name in fh.keys()}
            meta.pop("sha256")
        meta, tensors = self._raw
        return copy.deepcopy(meta), {name: t.clone() for name, t in tensors.items()}


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    made = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name, arch, flags in (("lexico", "llama", FLAGS), ("full", "llama", ["--cache", "full"]),
                                  ("gemma", "gemma3", FLAGS),
                                  ("adaptive", "llama", [*FLAGS, "--code-length", "adaptive"])):  # fmt: skip
            world = World(tmp_path_factory.mktemp(name), arch, flags)
            serve_tiny_model(monkeypatch, world.loaded)
            from lexico_chat.cli import main

            assert main([*map(str, world.flags), *REPLY, "--prompt", TURN1, "--save", str(world.good)]) == 0
            made[name] = world
    return made


def forge(world: World, out, mutate) -> bool:
    """Write ``world``'s good file with ``mutate(meta, tensors)`` applied and the checksum recomputed; False (and
    nothing written) when the mutation changed nothing (e.g. it set a field to the value it had)."""
    meta, tensors = world.raw()
    original = digest(tensors, meta)
    mutate(meta, tensors)
    if digest(tensors, meta) == original:
        return False
    meta = copy.deepcopy(meta)
    meta["sha256"] = digest(tensors, meta)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out), metadata={META_KEY: json.dumps(meta)})
    return True


# ----- mutations: each returns (label, mutate(meta, tensors)) -----------------------------------------------------
BAD_INTS = [None, "8", 8.5, True, [], {}, -1, 2**31, 10**30]
BAD_STRINGS = [None, 5, "bogus", [], {}]
_OTHER_DTYPE = {torch.int64: torch.int32, torch.int16: torch.int32, torch.float16: torch.bfloat16,
                torch.float8_e4m3fn: torch.float16}  # fmt: skip


def _set(path: tuple, value):
    def mutate(meta, tensors):
        target = meta
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _drop(path: tuple):
    def mutate(meta, tensors):
        target = meta
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


def _tensor(name: str, change):
    def mutate(meta, tensors):
        tensors[name] = change(tensors[name].clone())

    return mutate


def _poke(value):
    """Set the middle element (of a flattened copy) to ``value``, written through float32 for float tensors."""

    def change(t):
        flat = t.reshape(-1).clone()
        if t.is_floating_point():
            flat = flat.float()
            flat[flat.numel() // 2] = value
            return flat.to(t.dtype).reshape(t.shape)
        flat[flat.numel() // 2] = value
        return flat.reshape(t.shape)

    return change


def meta_mutations(world: World) -> list:
    meta, tensors = world.raw()
    cases = [(f"drop {key}", _drop((key,))) for key in meta]
    cases.append(("unknown field", _set(("extra",), 1)))
    cases += [(f"format={v!r}", _set(("format",), v)) for v in (1, 3, "2", 2.0, True, None, 2**63)]
    cases += [(f"model_id={v!r:.20}", _set(("model_id",), v)) for v in (None, 5, "", "x" * 2000, [], "other/model")]
    cases += [(f"settings={v!r}", _set(("settings",), v)) for v in (None, [], "x", 5, {})]
    for key in [k for k in meta["settings"] if k not in OLDER_SETTINGS]:  # those, older files lack: test below
        cases.append((f"drop settings.{key}", _drop(("settings", key))))
    for key in [k for k in ("sparsity", "atoms", "buffer", "window") if k in meta["settings"]]:
        cases += [(f"settings.{key}={v!r:.20}", _set(("settings", key), v)) for v in BAD_INTS]
        cases.append((f"settings.{key} other", _set(("settings", key), meta["settings"][key] + 1)))
    for key in ("kind", "coef_dtype", "select_dtype", "buffer_dtype", "layer_budget", "code_length"):
        cases += [(f"settings.{key}={v!r}", _set(("settings", key), v)) for v in BAD_STRINGS]
    cases += [("settings.kind=full", _set(("settings", "kind"), "full")),
              ("settings.coef_dtype=float16", _set(("settings", "coef_dtype"), "float16")),
              ("settings.buffer_dtype=float32", _set(("settings", "buffer_dtype"), "float32")),
              ("unknown setting", _set(("settings", "extra"), 1))]  # fmt: skip
    cases += [(f"settings.dictionary={v!r}", _set(("settings", "dictionary"), v)) for v in (None, "abc", 5, "0" * 64)]
    for v in (None, {}, "x", [5], [{"role": "user"}], [{"role": "hacker", "content": "x"}],
              [{"role": "user", "content": 5}], [{"role": "user", "content": "x", "extra": 1}]):  # fmt: skip
        cases.append((f"transcript={v!r:.30}", _set(("transcript",), v)))
    cases += [(f"cached_text={v!r}", _set(("cached_text",), v)) for v in (None, 5, [])]
    layers = meta["layers"]
    for v in (None, {}, [], layers[:-1], layers + [{"kind": "lexico"}], [5] * len(layers)):
        cases.append((f"layers={v!r:.30}", _set(("layers",), v)))
    length = tensors["token_ids"].numel()
    for fact in ({"kind": "bogus"}, {"kind": "empty"}, {"kind": "dense", "seen": length}, {"kind": "lexico", "x": 1}):
        cases.append((f"layers[0]={fact}", _set(("layers", 0), fact)))
    return cases


def tensor_mutations(world: World) -> list:
    _, tensors = world.raw()
    cases = []
    for name, t in tensors.items():
        cases.append((f"drop {name}", lambda meta, tensors, name=name: tensors.pop(name)))
        dtype = _OTHER_DTYPE.get(t.dtype, torch.float64)
        cases.append((f"{name} as {dtype}", _tensor(name, lambda x, dtype=dtype: x.to(dtype))))
        cases.append((f"{name} unsqueezed", _tensor(name, lambda x: x.unsqueeze(0))))
        cases.append((f"{name} scalar", _tensor(name, lambda x: x.reshape(-1)[:1].reshape(()))))
    for name in [n for n in tensors if n.endswith("_idx")][:4]:
        cases += [(f"{name}[mid]={v}", _tensor(name, _poke(v))) for v in (64, 32767, -1, -32768)]
    for name in [n for n in tensors if n.endswith(("_coef", "_buffer", "keys", "values")) or n.startswith("rope.")]:
        values = (float("nan"), float("inf"), -float("inf"), 1e30) if tensors[name].dtype != torch.float8_e4m3fn else (
            float("nan"),)  # fmt: skip
        cases += [(f"{name}[mid]={v}", _tensor(name, _poke(v))) for v in values]
    cases += [(f"token_ids[mid]={v}", _tensor("token_ids", _poke(v))) for v in (-1, 128, 2**40)]
    cases += [("token_ids one short", _tensor("token_ids", lambda x: x[:-1])),
              ("token_ids one more", _tensor("token_ids", lambda x: torch.cat([x, x[-1:]]))),
              ("extra tensor", lambda meta, tensors: tensors.update(junk=torch.zeros(3))),
              ("no rotary table", _drop_rope)]  # fmt: skip
    for layer in sorted({n.split(".")[0] for n in tensors if n.startswith("layer")}):
        parts = [n for n in tensors if n.startswith(f"{layer}.")]
        cases.append((f"{layer} one token short", _shorten(parts)))
    return cases


def _drop_rope(meta, tensors) -> None:
    for name in ("rope.cos", "rope.sin"):
        tensors.pop(name, None)


def _shorten(names: list[str]):
    """Drop the last token of the given tensors of one layer (codes and buffer together, or keys and values)."""

    def mutate(meta, tensors):
        for name in names:
            if name.endswith("_idx") or name.endswith("_coef") or name.endswith(("keys", "values")):
                tensors[name] = tensors[name][:, :, :-1]

    return mutate


def _grow(i: int):
    """Layer ``i``'s keys and values with their last token repeated (one token more than ``seen``)."""

    def mutate(meta, tensors):
        for part in ("keys", "values"):
            x = tensors[f"layer{i}.{part}"]
            tensors[f"layer{i}.{part}"] = torch.cat([x, x[:, :, -1:]], dim=2)

    return mutate


def dense_mutations(world: World) -> list:
    meta, _ = world.raw()
    dense = [i for i, fact in enumerate(meta["layers"]) if fact["kind"] == "dense"]
    cases = []
    for i in dense[:2]:
        seen = meta["layers"][i]["seen"]
        cases += [(f"layers[{i}].seen={v!r}", _set(("layers", i, "seen"), v)) for v in (seen - 1, seen + 1, "x", 2**40)]
        cases.append((f"layer{i} one token more", _grow(i)))
    return cases


def test_forged_session_files_are_refused_in_one_line(worlds, tmp_path, monkeypatch, capsys):
    cases = [("lexico", label, mutate) for label, mutate in meta_mutations(worlds["lexico"])]
    cases += [(name, label, mutate) for name in worlds
              for label, mutate in tensor_mutations(worlds[name]) + dense_mutations(worlds[name])]  # fmt: skip
    accepted, forged_count = [], 0
    for n, (name, label, mutate) in enumerate(cases):
        forged = tmp_path / f"forged{n}.lexico"
        if not forge(worlds[name], forged, mutate):
            continue
        forged_count += 1
        code, _, err = worlds[name].cli(monkeypatch, capsys, "--resume", forged, "--prompt", TURN2)
        if code == 0:
            accepted.append(f"{name}: {label}")
            continue
        assert_one_line_error(code, err)
        assert str(forged) in err, (label, err)
    assert not accepted, f"{len(accepted)} forged files were accepted: {accepted}"
    assert forged_count >= 200


def test_files_saved_before_a_setting_existed_resume_under_its_old_meaning(worlds, tmp_path, monkeypatch, capsys):
    """A session saved before ``layer_budget`` existed has no such setting; it was a uniform budget then."""
    world, older = worlds["lexico"], tmp_path / "older.lexico"
    assert forge(world, older, _drop(("settings", "layer_budget")))
    assert read_session_file(older).settings["layer_budget"] == OLDER_SETTINGS["layer_budget"] == "uniform"
    code, out, err = world.cli(monkeypatch, capsys, "--resume", older, "--prompt", TURN2)
    assert code == 0 and out.strip(), err


def test_flipped_bytes_are_refused_in_one_line(worlds, tmp_path, monkeypatch, capsys):
    world, rng = worlds["lexico"], random.Random(14)
    data = world.good.read_bytes()
    for n in range(100):
        flipped = bytearray(data)
        flipped[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        path = tmp_path / f"flip{n}.lexico"
        path.write_bytes(bytes(flipped))
        code, _, err = world.cli(monkeypatch, capsys, "--resume", path, "--prompt", TURN2)
        assert_one_line_error(code, err, str(path))


@pytest.mark.parametrize("name", ["lexico", "full", "gemma", "adaptive"])
def test_the_good_file_still_resumes_token_identically(worlds, name, tmp_path, monkeypatch, capsys):
    world = worlds[name]
    again = tmp_path / "again.lexico"
    code, out, err = world.cli(monkeypatch, capsys, "--resume", world.good, "--prompt", TURN2, "--save", again)
    assert code == 0, err
    cache = {"full": CacheConfig(kind="full"), "adaptive": OPTIONS.cache.replace(code_length="adaptive")}.get(
        name, OPTIONS.cache
    )
    dictionary = LexicoDictionary.load(world.flags[1]) if name != "full" else None
    reference = ChatSession(world.loaded, SessionOptions(cache=cache), dictionary=dictionary)
    sampling = SamplingConfig(max_new_tokens=6)
    "".join(reference.send(TURN1, sampling))
    assert out == "".join(reference.send(TURN2, sampling)) + "\n"
    with safe_open(str(again), framework="pt") as fh:
        assert fh.get_tensor("token_ids").tolist() == reference.cached_ids
    assert reference.stats().tokens_compressed > 0 or name == "full"
    if name == "adaptive":
        with safe_open(str(again), framework="pt") as fh:
            assert "layer0.key_counts" in fh.keys()
