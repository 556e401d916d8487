"""Per-layer universal dictionaries for keys and values, stored as safetensors + JSON metadata.

A file holds two tensors, ``keys`` and ``values``, each (layers, head_dim, atoms) with unit-norm
columns, and a ``lexico`` metadata entry (JSON) describing the model and how the file was made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from lexico_chat.atomic import write_safetensors
from lexico_chat.errors import LexicoError
from lexico_chat.rope import KEY_SPACES
from lexico_chat.textfile import regular_file

__all__ = ["DictionaryMeta", "LexicoDictionary", "FORMAT_VERSION", "ATOM_CHOICES", "model_slug"]

FORMAT_VERSION = 1
ATOM_CHOICES = (256, 512, 1024, 2048, 4096, 8192)
_UNIT_TOL = 1e-2


def model_slug(model_id: str) -> str:
    """Short, file-name-safe model name: ``org/Name-Instruct`` → ``Name-Instruct``."""
    name = model_id.rstrip("/").split("/")[-1]
    name = name.removesuffix(".gguf").split(".Q")[0]
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)


@dataclass(frozen=True)
class DictionaryMeta:
    """What a dictionary file says about itself; every figure is checked against the model."""

    model_id: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    atoms: int
    train_sparsity: int
    corpus: str = ""
    seed: int = 0
    heldout: dict = field(default_factory=dict)  # {"keys": {"4": rre, ...}, "values": {...}}
    format_version: int = FORMAT_VERSION
    key_space: str = "post_rope"  # what the key atoms code: "post_rope" or "pre_rope" (lexico_chat.rope)
    # per layer, the perplexity one layer adds at few atoms (lexico_chat.budget); None: not measured
    layer_sensitivity: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        profile = self.layer_sensitivity
        if profile is None:
            return
        if isinstance(profile, str | bytes) or not hasattr(profile, "__len__") or len(profile) != self.num_layers:
            raise ValueError(
                f"layer_sensitivity must list one number per layer ({self.num_layers}), got {profile!r:.60}"
            )
        if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in profile):
            raise ValueError("layer_sensitivity must hold finite numbers")
        object.__setattr__(self, "layer_sensitivity", tuple(float(x) for x in profile))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DictionaryMeta:
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        optional = {"corpus", "seed", "heldout", "format_version", "key_space", "layer_sensitivity"}
        missing = names - set(data) - optional
        if missing:
            raise ValueError(f"metadata lacks {sorted(missing)}")
        if data.get("key_space", "post_rope") not in KEY_SPACES:
            raise ValueError(f"key_space must be one of {list(KEY_SPACES)}, got {data['key_space']!r}")
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class LexicoDictionary:
    """Key and value dictionaries of every layer.

    Attributes
    ----------
    keys, values : (num_layers, head_dim, atoms) float tensors, unit-norm columns.
    meta : DictionaryMeta.
    """

    keys: torch.Tensor
    values: torch.Tensor
    meta: DictionaryMeta

    def __post_init__(self) -> None:
        expected = (self.meta.num_layers, self.meta.head_dim, self.meta.atoms)
        for name in ("keys", "values"):
            shape = tuple(getattr(self, name).shape)
            if shape != expected:
                raise ValueError(f"`{name}` must have shape {expected} (layers, head_dim, atoms), got {shape}")

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(head_dim, atoms) key and value dictionaries of layer ``index``."""
        return self.keys[index], self.values[index]

    @property
    def nbytes(self) -> int:
        """Bytes of the dictionary tensors held."""
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    def fingerprint(self) -> str:
        """sha256 of the tensors' bytes (fp16 as stored): identifies a dictionary in saved sessions."""
        digest = hashlib.sha256()
        for tensor in (self.keys, self.values):
            digest.update(tensor.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
        if self.meta.key_space != "post_rope":  # same atoms, other meaning (post-RoPE hashes stay as they were)
            digest.update(self.meta.key_space.encode())
        return digest.hexdigest()

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LexicoDictionary:
        return LexicoDictionary(self.keys.to(device, dtype), self.values.to(device, dtype), self.meta)

    @classmethod
    def identity(
        cls, model_id: str, num_layers: int, num_kv_heads: int, head_dim: int, key_space: str = "post_rope"
    ) -> LexicoDictionary:
        """The standard basis (atoms = head_dim): with sparsity = head_dim, codes are lossless."""
        eye = torch.eye(head_dim).expand(num_layers, head_dim, head_dim).contiguous()
        meta = DictionaryMeta(
            model_id, num_layers, num_kv_heads, head_dim, head_dim, head_dim, corpus="identity", key_space=key_space
        )
        return cls(eye, eye.clone(), meta)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically as fp16 safetensors with the metadata as JSON."""
        tensors = {
            name: getattr(self, name).detach().to("cpu", torch.float16).contiguous() for name in ("keys", "values")
        }
        return write_safetensors(path, tensors, metadata={"lexico": self.meta.to_json()})

    @staticmethod
    def read_meta(path: str | os.PathLike) -> DictionaryMeta:
        """The metadata of a dictionary file without reading its tensors; LexicoError when it has none."""
        try:
            with safe_open(str(path), framework="pt") as fh:
                return DictionaryMeta.from_json((fh.metadata() or {})["lexico"])
        except Exception as err:  # noqa: BLE001 - any parse failure means the file is no dictionary
            raise LexicoError(f"{path} is not a valid lexico dictionary file ({type(err).__name__}: {err})") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> LexicoDictionary:
        """Read and validate a dictionary file; any defect raises one LexicoError naming it."""
        path = regular_file(path, "dictionary file")  # a folder or a FIFO is named as such
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = DictionaryMeta.from_json((fh.metadata() or {})["lexico"])
                keys, values = fh.get_tensor("keys").float(), fh.get_tensor("values").float()
            dictionary = cls(keys, values, meta)
        except LexicoError:
            raise
        except Exception as err:  # noqa: BLE001 - any parse failure means the file is unusable
            raise LexicoError(f"{path} is not a valid lexico dictionary file ({type(err).__name__}: {err})") from None
        if meta.format_version != FORMAT_VERSION:
            raise LexicoError(
                f"{path} has dictionary format {meta.format_version}; this version reads {FORMAT_VERSION}"
            )
        dictionary._check_atoms(path)
        return dictionary

    def _check_atoms(self, path: Path) -> None:
        for name in ("keys", "values"):
            tensor = getattr(self, name)
            if not torch.isfinite(tensor).all():
                raise LexicoError(f"{path}: `{name}` holds non-finite values (corrupt file)")
            norms = tensor.norm(dim=1)
            if (norms - 1).abs().max() > _UNIT_TOL:
                raise LexicoError(f"{path}: `{name}` atoms are not unit-norm (corrupt file)")

    def check_model(self, model_id: str, num_layers: int, num_kv_heads: int, head_dim: int, source: str = "") -> None:
        """Raise LexicoError naming every figure that differs from the model's."""
        meta = self.meta
        wanted = {"model": model_slug(model_id), "layers": num_layers, "KV heads": num_kv_heads, "head_dim": head_dim}
        have = {
            "model": model_slug(meta.model_id),
            "layers": meta.num_layers,
            "KV heads": meta.num_kv_heads,
            "head_dim": meta.head_dim,
        }
        bad = [f"{k} {have[k]} (model has {wanted[k]})" for k in wanted if have[k] != wanted[k]]
        if bad:
            where = f" {source}" if source else ""
            raise LexicoError(f"dictionary{where} was made for another model: " + ", ".join(bad))
