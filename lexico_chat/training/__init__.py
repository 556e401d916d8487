"""Dictionary training: collect keys (post- or pre-RoPE) and values from a model, fit dictionaries per layer;
plan the settings for an unseen model from a timed probe (``plan``); the bundled corpus (``corpus``)."""

DEFAULT_BUDGET_S = 600.0  # what a training whose settings are planned (not given) should take on this device
