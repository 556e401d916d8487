"""Saved session files read as untrusted input: nothing is built from a file until all of it is checked.

A session file can come from another machine or another person. Its sha256 (over the metadata and every
tensor) catches accidental damage: truncation, flipped bytes, a partial copy. It is no signature: whoever
edits a file can recompute it. What makes a crafted file harmless is the validation here.

* ``read_session_file(path)`` -> ``SavedSession``: the file parses as safetensors, has this format and
  passes its checksum; every metadata field has its type and range (the cache settings through
  ``CacheConfig``); the tensors are exactly those the layer facts name, with their dtypes and ranks, finite
  values within fp16's range (``MAX_MAGNITUDE``) and atom indices in [0, N); and they agree with each other:
  per layer, compressed + buffered tokens = cached positions = the number of token ids, and the rotary
  table covers the same tokens.
* ``lexico_chat.engine.session_fit.check_fits(saved, session, cache)``: the file fits the session that would
  load it (the second half of the checks).

Every defect raises one ``LexicoError`` naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch
from safetensors import safe_open

from lexico_chat.adaptive import MAX_COUNT
from lexico_chat.cache.layer import torch_dtype
from lexico_chat.config import CacheConfig
from lexico_chat.engine.cache_state import ADAPTIVE_PARTS, DENSE_PARTS, LEXICO_PARTS, compressed_tokens
from lexico_chat.engine.types import Message
from lexico_chat.errors import LexicoError
from lexico_chat.textfile import regular_file

__all__ = [
    "SESSION_FORMAT",
    "META_KEY",
    "MAX_MAGNITUDE",
    "OLDER_SETTINGS",
    "Check",
    "SavedSession",
    "digest",
    "read_session_file",
    "session_settings",
]

SESSION_FORMAT = 2  # 2: settings are the CacheConfig fields (format 1 had a subset under other names)
META_KEY = "lexico_session"
MAX_MAGNITUDE = 65504.0  # the largest fp16 value: no K/V entry exceeds what the fp16 cache it replaces holds
_MAX_INT = 2**31 - 1
_ROLES = ("system", "user", "assistant")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_TOP_LEVEL = {"format", "model_id", "settings", "transcript", "cached_text", "layers"}
_LAYER_KEYS = {"empty": {"kind"}, "lexico": {"kind"}, "dense": {"kind", "seen"}}


@dataclass(frozen=True)
class SavedSession:
    """A session file's checked contents. ``tensors``: ``token_ids`` (T,) int64 and, per non-empty layer i,
    ``layer{i}.<part>`` (``LEXICO_PARTS`` or ``DENSE_PARTS``), plus ``rope.cos`` / ``rope.sin`` (1, T, m/2)
    for a pre-RoPE cache; ``layers``: one fact per layer ({"kind": "empty" | "lexico" | "dense", ...})."""

    path: Path
    model_id: str
    settings: dict
    transcript: list[Message]
    cached_text: str
    layers: list[dict]
    tensors: dict[str, torch.Tensor]

    @property
    def length(self) -> int:
        """Tokens the saved cache holds (= cached positions of every layer)."""
        return self.tensors["token_ids"].numel()

    @property
    def token_ids(self) -> list[int]:
        return self.tensors["token_ids"].tolist()


def session_settings(session) -> dict:
    """The cache settings a resume must match: every CacheConfig field (only the kind for a full cache)
    and the dictionary's fingerprint."""
    config = session.options.cache
    if not config.lexico:
        return {"kind": config.kind, "dictionary": None}
    return {**config.settings(), "dictionary": session.dictionary.fingerprint()}


def digest(tensors: dict[str, torch.Tensor], meta: dict) -> str:
    """sha256 over the metadata (without its ``sha256``) and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Check:
    """Raises the one-line error for the file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, what: str) -> NoReturn:
        raise LexicoError(f"{self.path} is not a valid lexico-chat session: {what}")

    def that(self, ok: bool, what: str) -> None:
        if not ok:
            self.fail(what)

    def fields(self, value, name: str, expected: set[str], optional: frozenset[str] = frozenset()) -> None:
        self.that(isinstance(value, dict), f"{name} must be an object, got {type(value).__name__}")
        missing, extra = sorted(expected - value.keys() - optional), sorted(value.keys() - expected)
        self.that(not missing, f"{name} lacks {', '.join(missing)}")
        self.that(not extra, f"{name} has unknown fields {', '.join(extra)[:80]}")

    def integer(self, value, name: str, low: int = 0, high: int = _MAX_INT) -> None:
        ok = isinstance(value, int) and not isinstance(value, bool)
        self.that(ok and low <= value <= high, f"{name} must be an integer in [{low}, {high}], got {value!r:.40}")

    def string(self, value, name: str) -> None:
        self.that(isinstance(value, str), f"{name} must be a string, got {type(value).__name__}")

    def tensor(self, t: torch.Tensor, name: str, dtypes: tuple, ndim: int) -> None:
        self.that(t.dtype in dtypes, f"{name} has dtype {t.dtype}, expected {' or '.join(map(str, dtypes))}")
        self.that(t.ndim == ndim, f"{name} has shape {tuple(t.shape)}, expected {ndim} dimensions")
        if t.is_floating_point() and t.numel():
            x = t.float()
            self.that(bool(torch.isfinite(x).all()), f"{name} holds NaN or infinite values")
            self.that(float(x.abs().max()) <= MAX_MAGNITUDE, f"{name} holds values beyond ±{MAX_MAGNITUDE:g}")

    def shape(self, t: torch.Tensor, name: str, expected: tuple) -> None:
        self.that(tuple(t.shape) == tuple(expected), f"{name} has shape {tuple(t.shape)}, expected {tuple(expected)}")


# ----- reading: the file agrees with itself ---------------------------------------------------------------------
def read_session_file(path: str | os.PathLike) -> SavedSession:
    """The checked contents of a session file; any defect raises one LexicoError."""
    path = regular_file(path, "session file")
    check = Check(path)
    tensors, meta = _parse(path)
    check.that(isinstance(meta, dict), f"its metadata is a {type(meta).__name__}, not an object")
    found = meta.get("format")
    if type(found) is not int or found != SESSION_FORMAT:  # not 2.0, not True
        raise LexicoError(f"{path} has session format {found!r:.20}; this version reads {SESSION_FORMAT}")
    claimed = meta.pop("sha256", None)
    if claimed != digest(tensors, meta):
        raise LexicoError(f"{path} fails its checksum: the file was modified or damaged")
    _check_meta(check, meta)
    if meta["settings"]["kind"] == "lexico":  # saved before a setting existed: it was saved under its old meaning
        meta["settings"] = {**OLDER_SETTINGS, **meta["settings"]}
    config = CacheConfig(**_config_fields(meta["settings"])) if meta["settings"]["kind"] == "lexico" else None
    _check_tensors(check, tensors, meta["layers"], config)
    transcript = [Message(m["role"], m["content"]) for m in meta["transcript"]]
    model_id, settings, text, layers = meta["model_id"], meta["settings"], meta["cached_text"], meta["layers"]
    return SavedSession(path, model_id, settings, transcript, text, layers, tensors)


def _parse(path: Path) -> tuple[dict[str, torch.Tensor], object]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            text = (fh.metadata() or {}).get(META_KEY)
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception as err:  # noqa: BLE001 - every parse failure means the same to the user
        raise LexicoError(
            f"{path} is not a readable lexico-chat session (truncated or corrupt: {type(err).__name__})"
        ) from None
    if text is None:
        raise LexicoError(f"{path} is a safetensors file but not a lexico-chat session (no {META_KEY!r} metadata)")
    try:
        return tensors, json.loads(text)
    except ValueError:
        raise LexicoError(f"{path} is not a readable lexico-chat session (its metadata is not JSON)") from None


def _config_fields(settings: dict) -> dict:
    return {name: value for name, value in settings.items() if name != "dictionary"}


def _check_meta(check: Check, meta: dict) -> None:
    check.fields(meta, "the metadata", _TOP_LEVEL)
    check.string(meta["model_id"], "model_id")
    check.that(0 < len(meta["model_id"]) <= 1000, "model_id must have 1 to 1000 characters")
    _check_settings(check, meta["settings"])
    transcript = meta["transcript"]
    check.that(isinstance(transcript, list), f"transcript must be a list, got {type(transcript).__name__}")
    for i, message in enumerate(transcript):
        check.fields(message, f"transcript[{i}]", {"role", "content"})
        check.that(message["role"] in _ROLES, f"transcript[{i}].role must be one of {list(_ROLES)}")
        check.string(message["content"], f"transcript[{i}].content")
    check.string(meta["cached_text"], "cached_text")
    layers = meta["layers"]
    check.that(isinstance(layers, list) and 0 < len(layers) <= 10_000, "layers must be a list of 1 to 10000 facts")
    for i, fact in enumerate(layers):
        check.that(isinstance(fact, dict) and fact.get("kind") in _LAYER_KEYS, f"layers[{i}] has no valid kind")
        check.fields(fact, f"layers[{i}]", _LAYER_KEYS[fact["kind"]])
        if fact["kind"] == "dense":
            check.integer(fact["seen"], f"layers[{i}].seen")


OLDER_SETTINGS = {
    "layer_budget": "uniform",
    "code_length": "fixed",
}  # settings older sessions lack, with what those sessions used
_NEWER_SETTINGS = frozenset(OLDER_SETTINGS)


def _check_settings(check: Check, settings) -> None:
    check.that(isinstance(settings, dict), f"settings must be an object, got {type(settings).__name__}")
    kind = settings.get("kind")
    check.that(kind in ("lexico", "full"), f"settings.kind must be 'lexico' or 'full', got {str(kind)[:40]!r}")
    if kind == "full":
        check.fields(settings, "settings", {"kind", "dictionary"})
        check.that(settings["dictionary"] is None, "settings.dictionary must be null for a full cache")
        return
    check.fields(settings, "settings", set(CacheConfig.__dataclass_fields__) | {"dictionary"}, _NEWER_SETTINGS)
    fingerprint = settings["dictionary"]
    check.that(
        isinstance(fingerprint, str) and len(fingerprint) == 64 and all(c in "0123456789abcdef" for c in fingerprint),
        "settings.dictionary must be a sha256 hex digest",
    )
    for name in ("sparsity", "atoms", "buffer", "window"):
        check.integer(settings[name], f"settings.{name}")
    try:
        CacheConfig(**_config_fields(settings))
    except LexicoError as err:
        check.fail(f"settings: {err}")


def _check_tensors(check: Check, tensors: dict, layers: list[dict], config: CacheConfig | None) -> None:
    rope = {"rope.cos", "rope.sin"}
    expected = {"token_ids"} | (rope if rope & tensors.keys() else set())
    for i, fact in enumerate(layers):
        parts = {"lexico": LEXICO_PARTS, "dense": DENSE_PARTS}.get(fact["kind"], ())
        expected |= {f"layer{i}.{part}" for part in parts}
        if fact["kind"] == "lexico":  # a side whose codes adapt saves its atom counts too
            expected |= {f"layer{i}.{part}" for part in ADAPTIVE_PARTS} & tensors.keys()
    missing, extra = sorted(expected - tensors.keys()), sorted(tensors.keys() - expected)
    check.that(not missing, f"tensors {', '.join(missing)[:80]} are missing")
    check.that(not extra, f"unexpected tensors {', '.join(extra)[:80]}")
    ids = tensors["token_ids"]
    check.tensor(ids, "token_ids", (torch.int64,), 1)
    length = ids.numel()
    check.that(length <= _MAX_INT and (length == 0 or int(ids.min()) >= 0), "token_ids must be >= 0")
    empty = [fact["kind"] == "empty" for fact in layers]
    check.that(all(empty) if length == 0 else not any(empty), "every layer must hold the tokens of token_ids")
    for i, fact in enumerate(layers):
        if fact["kind"] == "lexico":
            check.that(config is not None, f"layer {i} is compressed but the settings are of a full cache")
            parts = {p: tensors[f"layer{i}.{p}"] for p in LEXICO_PARTS + ADAPTIVE_PARTS if f"layer{i}.{p}" in tensors}
            _check_lexico_layer(check, i, parts, config, length)
        elif fact["kind"] == "dense":
            _check_dense_layer(check, i, tensors[f"layer{i}.keys"], tensors[f"layer{i}.values"], fact["seen"], length)
    if "rope.cos" in tensors:
        check.that(config is not None and length > 0, "a rotary table belongs only to a compressed cache with tokens")
        cos, sin = tensors["rope.cos"], tensors["rope.sin"]
        for name, t in (("rope.cos", cos), ("rope.sin", sin)):
            check.tensor(t, name, (torch.float16, torch.float32), 3)  # fp16; fp32 under lossless settings
            check.shape(t, name, (cos.shape[0], length, cos.shape[2]))


def _check_lexico_layer(check: Check, i: int, parts: dict, config: CacheConfig, length: int) -> None:
    key_buffer, value_buffer = parts["key_buffer"], parts["value_buffer"]
    check.tensor(key_buffer, f"layer{i}.key_buffer", _FLOATS, 4)
    b, h = key_buffer.shape[:2]
    if "key_counts" in parts:  # what the number of compressed tokens is read from
        check.tensor(parts["key_counts"], f"layer{i}.key_counts", (torch.uint8,), 3)
    else:
        check.tensor(parts["key_idx"], f"layer{i}.key_idx", (torch.int16,), 4)
    compressed = compressed_tokens(parts, "")
    for name, s in (("key", config.sparsity_k), ("value", config.sparsity_v)):
        idx, coef = parts[f"{name}_idx"], parts[f"{name}_coef"]
        if f"{name}_counts" in parts:
            _check_runs(check, f"layer{i}.{name}", idx, coef, parts[f"{name}_counts"], config, (b, h, compressed))
        else:
            _check_codes(check, f"layer{i}.{name}", idx, coef, config, s, (b, h, compressed))
        low, high = (int(idx.min()), int(idx.max())) if idx.numel() else (0, 0)
        check.that(low >= 0 and high < config.atoms, f"layer{i}.{name}_idx holds atoms outside [0, {config.atoms})")
    for name, buffer in (("key_buffer", key_buffer), ("value_buffer", value_buffer)):
        check.tensor(buffer, f"layer{i}.{name}", (key_buffer.dtype,), 4)
        check.shape(buffer, f"layer{i}.{name}", (b, h, length - compressed, key_buffer.shape[3]))


def _check_codes(check: Check, name: str, idx, coef, config: CacheConfig, s: int, tokens: tuple) -> None:
    """Fixed-length codes: (b, h, T, s) int16 indices and coefficients."""
    check.tensor(idx, f"{name}_idx", (torch.int16,), 4)
    check.tensor(coef, f"{name}_coef", (torch_dtype(config.coef_dtype),), 4)
    if config.layer_budget != "uniform":  # s per layer from the dictionary's profile: checked against the
        s = idx.shape[-1]  # cache built from it when the session is loaded (check_fits); here only its range
        check.that(1 <= s <= 2 * config.sparsity, f"{name}_idx holds {s} atoms per vector")
    check.that(idx.shape[-1] == s, f"{name}_idx holds {idx.shape[-1]} atoms per vector, the settings say {s}")
    check.shape(idx, f"{name}_idx", (*tokens, s))
    check.shape(coef, f"{name}_coef", (*tokens, s))


def _check_runs(check: Check, name: str, idx, coef, counts, config: CacheConfig, tokens: tuple) -> None:
    """Codes of varying length: (b, h, atoms) int16 indices and coefficients, (b, h, T) uint8 atom counts in
    [1, MAX_COUNT], the same number of atoms in every window (the layer's own, checked by check_fits)."""
    check.that(config.adaptive_codes, f"{name}_counts belongs to adaptive codes, the settings say fixed")
    check.tensor(counts, f"{name}_counts", (torch.uint8,), 3)
    check.shape(counts, f"{name}_counts", tokens)
    check.tensor(idx, f"{name}_idx", (torch.int16,), 3)
    check.tensor(coef, f"{name}_coef", (torch_dtype(config.coef_dtype),), 3)
    check.shape(coef, f"{name}_coef", tuple(idx.shape))
    window, t = config.window, tokens[2]
    check.that(t % window == 0, f"{name}_counts covers {t} tokens, not whole windows of {window}")
    if not counts.numel():
        check.that(idx.shape[2] == 0, f"{name}_idx holds atoms of no token")
        return
    check.that(1 <= int(counts.min()) and int(counts.max()) <= MAX_COUNT, f"{name}_counts must be in [1, {MAX_COUNT}]")
    sums = counts.to(torch.int64).view(*tokens[:2], t // window, window).sum(-1)
    check.that(bool((sums == sums.flatten()[0]).all()), f"{name}_counts gives its windows different numbers of atoms")
    check.that(
        idx.shape[2] == int(sums.sum()) // (tokens[0] * tokens[1]),
        f"{name}_idx does not hold the atoms of {name}_counts",
    )


def _check_dense_layer(check: Check, i: int, keys: torch.Tensor, values: torch.Tensor, seen: int, length: int) -> None:
    check.tensor(keys, f"layer{i}.keys", _FLOATS, 4)
    check.tensor(values, f"layer{i}.values", (keys.dtype,), 4)
    check.shape(values, f"layer{i}.values", keys.shape)
    check.that(seen == length, f"layers[{i}].seen is {seen} but token_ids holds {length} tokens")
    check.that(0 < keys.shape[2] <= length, f"layer{i}.keys holds {keys.shape[2]} tokens of {length}")
