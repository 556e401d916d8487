"""lexico-chat: a local chat runtime whose KV cache is sparse-coded over universal dictionaries (Lexico)."""

__version__ = "0.1.0"
