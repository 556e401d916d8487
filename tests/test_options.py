"""One source for the cache settings: CacheConfig's defaults and checks, the flags built from them, and
resume restoring every saved setting (0 included)."""

import argparse
import dataclasses

import pytest

from lexico_chat import chat_cli
from lexico_chat.config import CacheConfig
from lexico_chat.engine import persist
from lexico_chat.errors import LexicoError
from lexico_chat.models import ModelDims
from lexico_chat.options import cache_config
from lexico_chat.training.trainer import TrainConfig


def _chat_args(*argv):
    parser = argparse.ArgumentParser()
    chat_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_default_to_cache_config_fields():
    parser = argparse.ArgumentParser()
    from lexico_chat.options import add_cache_options, add_dictionary_options

    add_dictionary_options(parser)
    add_cache_options(parser)
    args = parser.parse_args([])
    defaults = CacheConfig()
    assert (args.sparsity, args.atoms, args.buffer, args.window) == (
        defaults.sparsity,
        defaults.atoms,
        defaults.buffer,
        defaults.window,
    )
    assert (TrainConfig().atoms, TrainConfig().sparsity) == (defaults.atoms, defaults.sparsity)


@pytest.mark.parametrize("saved_buffer", [0, 7])
def test_resume_restores_every_saved_setting_including_zero(monkeypatch, saved_buffer):
    saved = {**CacheConfig(buffer=saved_buffer, window=8, sparsity=4).settings()}
    monkeypatch.setattr(persist, "saved_cache_settings", lambda path: saved)
    options = chat_cli.session_options(_chat_args("--resume", "chat.lexico"))
    assert options.cache == CacheConfig(buffer=saved_buffer, window=8, sparsity=4)
    options = chat_cli.session_options(_chat_args("--resume", "chat.lexico", "--buffer", "32"))
    assert options.cache.buffer == 32 and options.cache.window == 8  # a flag given wins, the rest is restored


def test_no_resume_takes_the_defaults():
    assert chat_cli.session_options(_chat_args()).cache == CacheConfig()
    assert chat_cli.session_options(_chat_args("--cache", "full")).cache.kind == "full"


def test_cache_config_from_namespace_ignores_unknown_saved_fields():
    args = argparse.Namespace(cache=None, sparsity=None, atoms=None, buffer=None, window=None)
    assert cache_config(args, {"kind": "full", "dictionary": "abc"}) == CacheConfig(kind="full")


def test_validate_names_the_parameter_the_range_and_the_value():
    dims = ModelDims(num_layers=4, num_kv_heads=2, head_dim=16, max_positions=1024)
    with pytest.raises(LexicoError, match=r"--sparsity must be in \[1, 16\], got 17"):
        CacheConfig(sparsity=17).validate(dims)
    assert CacheConfig(sparsity=16).validate(dims).sparsity == 16
    with pytest.raises(LexicoError, match=r"--key-sparsity must be in \[1, 16\], got 20"):
        CacheConfig(key_sparsity=20).validate(dims)
    with pytest.raises(LexicoError, match=r"--value-sparsity must be >= 1, got 0"):
        CacheConfig(value_sparsity=0)
    with pytest.raises(LexicoError, match=r"--cache must be one of \['lexico', 'full'\], got 'dense'"):
        CacheConfig(kind="dense")
    with pytest.raises(LexicoError, match=r"--atoms must be in \[2, 32767\], got 1"):
        dataclasses.replace(CacheConfig(), atoms=1)


def test_one_key_space_default():
    from lexico_chat import train_cli
    from lexico_chat.config import DEFAULT_KEY_SPACE

    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers()
    train_cli.register(commands)
    args = parser.parse_args(["train-dictionary", "--corpus", "x", "--out", "y"])
    assert args.key_space.replace("-", "_") == DEFAULT_KEY_SPACE == TrainConfig().key_space
