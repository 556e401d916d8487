"""Dictionary files: round trip, validation, lookup, atomic writes."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lexico_chat import lookup
from lexico_chat.dictionary import DictionaryMeta, LexicoDictionary
from lexico_chat.errors import LexicoError
from lexico_chat.models import ModelDims


def _dictionary(layers=2, heads=3, m=8, n=32, model_id="org/Tiny-Model"):
    gen = torch.Generator().manual_seed(0)
    k, v = torch.randn(layers, m, n, generator=gen), torch.randn(layers, m, n, generator=gen)
    k, v = k / k.norm(dim=1, keepdim=True), v / v.norm(dim=1, keepdim=True)
    meta = DictionaryMeta(model_id, layers, heads, m, n, 4, corpus="test", heldout={"keys": {"4": 0.5}})
    return LexicoDictionary(k, v, meta)


def test_round_trip(tmp_path):
    d = _dictionary()
    d.save(tmp_path / "d.safetensors")
    back = LexicoDictionary.load(tmp_path / "d.safetensors")
    assert back.meta == d.meta
    torch.testing.assert_close(back.keys, d.keys, atol=1e-3, rtol=0)  # stored as fp16
    assert back.fingerprint() == d.fingerprint()
    assert back.nbytes == 2 * 2 * 8 * 32 * 4


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not_unit", "no_meta", "bad_shape"])
def test_corrupt_files_give_one_clear_error(tmp_path, damage):
    path = tmp_path / "d.safetensors"
    d = _dictionary()
    d.save(path)
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00\xff" * 100)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "not_unit":
        save_file(
            {"keys": (d.keys * 3).half(), "values": d.values.half()}, str(path), metadata={"lexico": d.meta.to_json()}
        )
    elif damage == "no_meta":
        save_file({"keys": d.keys.half(), "values": d.values.half()}, str(path))
    else:
        save_file(
            {"keys": d.keys[:1].half(), "values": d.values.half()}, str(path), metadata={"lexico": d.meta.to_json()}
        )
    with pytest.raises(LexicoError) as err:
        LexicoDictionary.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_check_model_names_every_mismatch():
    d = _dictionary()
    d.check_model("other-org/Tiny-Model", 2, 3, 8)  # same model name under another org is accepted
    with pytest.raises(LexicoError, match=r"model Tiny-Model \(model has Other\).*layers 2 \(model has 30\)"):
        d.check_model("Other", 30, 3, 8)
    with pytest.raises(LexicoError, match=r"head_dim 8 \(model has 64\)"):
        d.check_model("org/Tiny-Model", 2, 3, 64)


def test_lookup_order_and_missing_message(tmp_path, monkeypatch):
    monkeypatch.setenv("LEXICO_CHAT_HOME", str(tmp_path / "home"))
    dims = ModelDims(2, 3, 8, 128)
    with pytest.raises(LexicoError, match="lexico-chat train-dictionary --model org/Tiny-Model .*--atoms 32"):
        lookup.find_dictionary("org/Tiny-Model", dims, 32)
    user = lookup.user_dictionary_folder() / lookup.dictionary_filename("org/Tiny-Model", 32)
    _dictionary().save(user)
    assert lookup.find_dictionary("org/Tiny-Model", dims, 32).meta.atoms == 32
    explicit = tmp_path / "mine.safetensors"
    _dictionary(n=16).save(explicit)
    assert lookup.find_dictionary("org/Tiny-Model", dims, 32, path=explicit).meta.atoms == 16
    with pytest.raises(LexicoError, match="dictionary file not found"):
        lookup.find_dictionary("org/Tiny-Model", dims, 32, path=tmp_path / "nope.safetensors")


def test_interrupted_save_keeps_earlier_file(tmp_path, monkeypatch):
    path = tmp_path / "d.safetensors"
    _dictionary().save(path)
    before = path.read_bytes()

    def broken(self, data):  # the write of the bytes is interrupted half-way
        open(self, "wb").write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", broken)
    with pytest.raises(KeyboardInterrupt):
        _dictionary(n=16).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.safetensors"]


def test_identity_dictionary_shape():
    d = LexicoDictionary.identity("m", 3, 2, 16)
    assert d.keys.shape == (3, 16, 16) and torch.equal(d.keys[1], torch.eye(16))
