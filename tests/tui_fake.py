"""A fake ChatEngine for the TUI tests (canned replies with tiny delays, canned stats, a record of calls) and
the Pilot helpers the TUI tests share."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from lexico_chat.engine.types import IngestProgress, Message, SamplingConfig, SessionStats
from lexico_chat.errors import MissingDictionaryError
from lexico_chat.memory import LayerMemory, Memory
from lexico_chat.tui.app import LexicoApp
from lexico_chat.tui.screens.load_error import LoadErrorDialog
from lexico_chat.tui.widgets.assistant_message import AssistantMessage
from lexico_chat.tui.widgets.prompt_input import PromptInput

REPLY = ("Hello", "! Here", " is", " code:\n\n", "```python\n", "print(", "'hi')\n", "```\n\n", "Done", ".")
TRAIN_COMMAND = "lexico-chat train-dictionary --model HuggingFaceTB/SmolLM2-135M-Instruct --atoms 4096"
TRAIN_MESSAGE = f"no dictionary for HuggingFaceTB/SmolLM2-135M-Instruct (atoms 4096); train one with: {TRAIN_COMMAND}"


def fake_memory(kv_fraction: float = 0.125, layers: int = 4) -> Memory:
    """``layers`` identical layers of 896 compressed + 128 buffered tokens holding 192 KiB of codes and 64 KiB
    of buffer each (1 MiB in all), with fp16 bytes such that kv_bytes / fp16_bytes == ``kv_fraction``
    (8 MiB at the default; 0 gives layers of 2 MiB fp16 that hold nothing)."""
    held = (3 << 16, 1 << 16) if kv_fraction else (0, 0)
    fp16 = round(sum(held) / kv_fraction) if kv_fraction else 2 << 20
    return Memory(tuple(LayerMemory(i, "lexico", 896, 128, 1024, *held, sum(held), fp16) for i in range(layers)))


def fake_stats(kv_fraction: float = 0.125, **changes) -> SessionStats:
    """Canned figures: kv_fraction 0.125 (8.0× smaller), CPU (no GPU), SmolLM2, s=8, N=4096; ``memory``
    may be replaced, or ``kv_fraction`` given to scale the canned layers' fp16 bytes."""
    base = SessionStats(
        memory=fake_memory(kv_fraction=kv_fraction), context_tokens=1024, max_positions=8192, prefill_tps=250.0,
        decode_tps=13.5, rss_bytes=812 << 20, gpu_used_bytes=None, gpu_total_bytes=None, torch_allocated_bytes=None,
        dictionary_bytes=30 << 20, model_id="SmolLM2-135M-Instruct", device="cpu", cache="lexico", sparsity=8,
        atoms=4096,
    )  # fmt: skip
    return replace(base, **changes)


def empty_stats(**changes) -> SessionStats:
    """The figures of a session with nothing in its cache yet (four empty layers; kv_fraction None)."""
    memory = Memory(tuple(LayerMemory(i, "empty") for i in range(4)))
    return fake_stats(**{"memory": memory, "context_tokens": 0, "prefill_tps": 0.0, "decode_tps": 0.0, **changes})


@dataclass
class FakeEngine:
    """Implements ``ChatEngine``. ``calls`` records (method, args); ``fail`` maps a method name to the
    exception it raises (send/ask_document raise when iteration starts, like a generator would);
    ``hold`` makes a reply wait after ``hold`` deltas until ``release`` is set (to look mid-stream)."""

    reply: tuple[str, ...] = REPLY
    delay: float = 0.005
    stats_values: SessionStats = field(default_factory=fake_stats)
    changing: bool = False  # context_tokens grows by one on each stats() call
    fail: dict[str, Exception] = field(default_factory=dict)
    hold: int | None = None
    transcript: list[Message] = field(default_factory=list)
    calls: list[tuple] = field(default_factory=list)
    system: str = ""

    def __post_init__(self) -> None:
        self.cancelled = threading.Event()
        self.release = threading.Event()
        self.stats_calls = 0

    def _check(self, method: str) -> None:
        if method in self.fail:
            raise self.fail[method]

    def _stream(self, user: str) -> Iterator[str]:
        self.transcript.append(Message("user", user))
        self.cancelled.clear()
        text = ""
        for i, delta in enumerate(self.reply):
            if i == self.hold:
                self.release.wait(5)
            if self.cancelled.is_set():
                break
            time.sleep(self.delay)
            text += delta
            yield delta
        self.transcript.append(Message("assistant", text))

    def send(self, text: str, sampling: SamplingConfig | None = None) -> Iterator[str]:
        self.calls.append(("send", text, sampling))
        self._check("send")
        yield from self._stream(text)

    def ask_document(
        self,
        path: str,
        question: str,
        sampling: SamplingConfig | None = None,
        progress: Callable[[IngestProgress], None] | None = None,
    ) -> Iterator[str]:
        self.calls.append(("ask_document", path, question, sampling))
        self._check("ask_document")
        for done in (256, 512, 768, 1000):
            time.sleep(self.delay)
            if progress is not None:
                progress(IngestProgress(done, 1000, 500.0))
        yield from self._stream(question)

    def cancel(self) -> None:
        self.calls.append(("cancel",))
        self.cancelled.set()
        self.release.set()

    def clear(self) -> None:
        self.calls.append(("clear",))
        self._check("clear")
        self.transcript.clear()

    def set_system(self, text: str) -> None:
        self.calls.append(("set_system", text))
        self._check("set_system")
        self.system = text
        self.transcript.clear()

    def save(self, path: str) -> str:
        self.calls.append(("save", path))
        self._check("save")
        return path

    def resume(self, path: str) -> None:
        self.calls.append(("resume", path))
        self._check("resume")
        self.transcript[:] = [Message("user", "What was saved?"), Message("assistant", "This **resumed** reply.")]

    def stats(self) -> SessionStats:
        self.stats_calls += 1
        if not self.changing:
            return self.stats_values
        return replace(self.stats_values, context_tokens=self.stats_values.context_tokens + self.stats_calls)

    def methods(self) -> list[str]:
        """The names of the recorded calls, in order."""
        return [call[0] for call in self.calls]


def raising_factory(err: Exception) -> Callable[[], FakeEngine]:
    def factory() -> FakeEngine:
        raise err

    return factory


def missing_dictionary_factory() -> Callable[[], FakeEngine]:
    """Raises a MissingDictionaryError with a short canned message (the snapshot shows it)."""
    model_id, estimate = "HuggingFaceTB/SmolLM2-135M-Instruct", "about 1 min on 2 CPU cores"
    err = MissingDictionaryError(TRAIN_MESSAGE, model_id=model_id, atoms=4096, command=TRAIN_COMMAND, estimate=estimate)
    return raising_factory(err)


# ---- Pilot helpers ------------------------------------------------------------------------------------------

SIZE = (100, 32)


def pilot_test(scenario):
    """Run an async Pilot scenario in its own event loop (no pytest async plugin needed)."""

    @functools.wraps(scenario)
    def test(*args, **kwargs) -> None:
        asyncio.run(scenario(*args, **kwargs))

    return test


class RecordingApp(LexicoApp):
    """Keeps every notification as (severity, message)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.notes: list[tuple[str, str]] = []

    def notify(self, message, *, severity="information", **kwargs) -> None:
        self.notes.append((severity, str(message)))
        super().notify(message, severity=severity, **kwargs)

    def errors(self) -> list[str]:
        return [message for severity, message in self.notes if severity == "error"]


async def wait_for(pilot, condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await pilot.pause(0.01)


def load_error_ready(app) -> bool:
    """The load-error dialog is up with its buttons mounted: the screen is pushed before the button row's
    children are, so a test that queries a button right after the push can miss it."""
    return isinstance(app.screen, LoadErrorDialog) and bool(app.screen.query("#quit"))


def make_app(engine: FakeEngine, **kwargs) -> RecordingApp:
    return RecordingApp(lambda: engine, **kwargs)


async def submit(pilot, text: str) -> None:
    prompt = pilot.app.query_one(PromptInput)
    prompt.load_text(text)
    await pilot.press("enter")


async def chat_turn(pilot, text: str) -> AssistantMessage:
    """Send ``text`` and wait for the reply to finish."""
    await submit(pilot, text)
    await wait_for(pilot, lambda: not pilot.app.chat.replying and pilot.app.query(AssistantMessage))
    reply = pilot.app.query(AssistantMessage).last()
    await wait_for(pilot, lambda: reply.finished)
    return reply


async def ready(pilot) -> None:
    await wait_for(pilot, lambda: pilot.app.engine is not None)
