"""Dictionary training: collect post-RoPE keys and values from a model, fit dictionaries per layer."""
