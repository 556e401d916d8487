"""An OpenAI-compatible HTTP server on the chat engine (``lexico-chat serve``).

Layout: ``app`` builds the Starlette application (routes, API-key check, error handlers); ``routes`` and
``session_routes`` hold the endpoints; ``schema`` validates chat requests; ``service`` ties together the
``store`` (compressed conversations under an LRU memory budget), the ``worker`` (one generation at a time
from a bounded queue), ``generation`` (one turn: stop strings, cancellation) and ``saved`` (session files);
``sse`` writes streamed replies; ``cli`` is the ``serve`` command.

Why Starlette on uvicorn: both are small, maintained, ASGI-native (streaming and client-disconnect events
are part of the protocol), and carry no extra machinery: FastAPI would add pydantic models for a dozen
fields we validate by hand, aiohttp and Flask bring their own server models. The blocking torch work
runs on one worker thread; the event loop only moves text.

Importing this package does not import torch: the engine is imported when serving starts.
"""
