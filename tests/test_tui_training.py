"""The missing-dictionary dialog's "Train now": the training screen's progress, cancel and resume against a fake
offer, and end to end on a tiny model from a temporary Hugging Face cache, through training to a chat that
answers as a ChatSession with the new dictionary does."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from textual.widgets import ProgressBar

from lexico_chat.config import CacheConfig
from lexico_chat.dictionary import LexicoDictionary
from lexico_chat.engine.first_run import open_session
from lexico_chat.engine.options import SessionOptions
from lexico_chat.engine.session import ChatSession
from lexico_chat.engine.startup import TrainingCancelled, TrainingProgress
from lexico_chat.engine.types import SamplingConfig
from lexico_chat.errors import MissingDictionaryError
from lexico_chat.models import load_model
from lexico_chat.training.corpus import essay_files
from lexico_chat.tui.screens.chat import ChatScreen
from lexico_chat.tui.screens.training import TrainingScreen
from lexico_chat.tui.widgets.assistant_message import AssistantMessage
from lexico_chat.tui.widgets.note import Note
from tests.hf_cache import add_to_cache, tiny_model_folder
from tests.tui_fake import (
    REPLY,
    SIZE,
    FakeEngine,
    RecordingApp,
    chat_turn,
    load_error_ready,
    pilot_test,
    raising_factory,
    wait_for,
)


@dataclass
class FakeOffer:
    """Two layers: each ``train`` call fits one more layer, then waits at the next step until ``go`` is set
    (or cancelled); the second layer's completion returns ``engine``."""

    engine: FakeEngine = field(default_factory=FakeEngine)
    model_id: str = "org/Unseen-Model"
    atoms: int = 4096
    summary: str = "12,000 vectors × 5 rounds per layer, about 3 min on cpu (probe: ...)"
    estimate_s: float = 180.0
    disk_bytes: int = 1 << 20
    layers: int = 2
    layers_done: int = 0
    result: str = ""
    calls: int = 0

    def __post_init__(self) -> None:
        self.go = threading.Event()

    def train(self, progress=None, cancel=None):
        self.calls += 1
        progress(TrainingProgress(0.25 + 0.5 * self.layers_done, f"fitting layer {self.layers_done} keys", 1.0, 75.0))
        self.layers_done += 1
        deadline = time.monotonic() + 20  # a failed scenario must not leave the worker waiting forever
        while not self.go.wait(0.01):
            if cancel.is_set() or time.monotonic() > deadline:
                raise TrainingCancelled("cancelled")
        self.layers_done = 2
        self.result = "held-out relative error at s=8: keys 0.140, values 0.300"
        return self.engine


def _dialog_ready(app) -> bool:
    return load_error_ready(app) and bool(app.screen.query("#train-now"))


def _missing(offer) -> MissingDictionaryError:
    return MissingDictionaryError(
        "no dictionary with 4096 atoms for org/Unseen-Model", model_id=offer.model_id, atoms=4096,
        command="lexico-chat train-dictionary --model org/Unseen-Model --atoms 4096", estimate="about 3 min",
        offer=offer,
    )  # fmt: skip


def test_train_now_shows_progress_cancels_and_resumes_into_the_chat() -> None:
    offer = FakeOffer()
    app = RecordingApp(raising_factory(_missing(offer)))

    @pilot_test
    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: _dialog_ready(app))
            assert str(app.screen.query_one("#train-summary").render()) == offer.summary
            assert app.screen.focused.id == "train-now" and str(app.screen.focused.label) == "Train now"
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, TrainingScreen) and app.screen.last is not None)
            screen = app.screen
            assert screen.query_one(ProgressBar).progress == 250
            assert str(screen.query_one("#training-stage").render()) == "fitting layer 0 keys · 25% · about 75 s left"
            await pilot.press("escape")  # cancel: back to the dialog, which now resumes
            await wait_for(pilot, lambda: _dialog_ready(app))
            assert str(app.screen.query_one("#train-now").label) == "Resume training"
            assert "Training cancelled; the layers fitted so far are kept" in [m for _, m in app.notes]
            app.screen.query_one("#train-now").press()
            await wait_for(pilot, lambda: isinstance(app.screen, TrainingScreen) and app.screen.last is not None)
            assert app.screen.query_one(ProgressBar).progress == 750  # the second layer: resumed, not restarted
            offer.go.set()
            await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen) and app.engine is offer.engine)
            note = app.query_one(Note)
            assert "held-out relative error at s=8: keys 0.140" in note.source and offer.model_id in note.source
            assert (await chat_turn(pilot, "hello")).text == "".join(REPLY)
            assert offer.calls == 2 and not app.errors()
            await pilot.press("ctrl+q")
        assert app.return_code == 0

    scenario()


def test_train_now_on_a_tiny_model_opens_a_chat_that_uses_the_new_dictionary(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("LEXICO_CHAT_HOME", str(tmp_path / "home"))
    add_to_cache(tmp_path / "hf", "tiny-org/TinyName", tiny_model_folder(tmp_path / "files"))
    corpus = ([essay_files()[2].read_text()[:2500]], "an essay")
    options = SessionOptions(
        model="TinyName", device="cpu", cache=CacheConfig(sparsity=4, atoms=64, buffer=16, window=8)
    )
    app = RecordingApp(
        lambda: open_session(options, corpus=corpus, budget_s=0.06), sampling=SamplingConfig(max_new_tokens=8)
    )

    @pilot_test
    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: _dialog_ready(app), timeout=120)
            summary = str(app.screen.query_one("#train-summary").render())
            assert "6,000 vectors × 4 rounds per layer, about " in summary and " on cpu (probe: OMP " in summary
            assert "of disk while training" in summary
            app.screen.query_one("#train-now").press()
            await wait_for(pilot, lambda: isinstance(app.screen, TrainingScreen))
            deadline = time.monotonic() + 300
            while app.engine is None:  # polled slowly: a busy UI thread starves the training thread of the GIL
                assert time.monotonic() < deadline, "training did not finish"
                await pilot.pause(0.25)
            assert isinstance(app.screen, ChatScreen)
            assert "held-out relative error at s=4" in app.query_one(Note).source
            await chat_turn(pilot, "Hello there")
            reply = app.query(AssistantMessage).last().text
            path = tmp_path / "home" / "dictionaries" / "TinyName-N64.safetensors"
            reference = ChatSession(load_model("TinyName", device="cpu"), options, LexicoDictionary.load(path))
            assert reply == "".join(reference.send("Hello there", SamplingConfig(max_new_tokens=8)))
            assert not app.errors()

    scenario()
