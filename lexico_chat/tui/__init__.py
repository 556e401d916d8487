"""Terminal UI (Textual). Imports the engine's types only, never torch: see ``tui/app.py`` for the entry point."""
