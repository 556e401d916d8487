"""Opening a chat on any model: load it, find its dictionary, and where there is none, offer to train one now
on the bundled corpus (``lexico_chat.training.corpus``) with settings sized for the model and this device
(``lexico_chat.training.plan``). The trained file goes to the user folder under the name the lookup finds;
an interrupted run resumes from its per-layer checkpoints, and the work folder goes once the file is written.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from lexico_chat import models
from lexico_chat.dictionary import LexicoDictionary
from lexico_chat.engine.caches import resolve_dictionary
from lexico_chat.engine.options import SessionOptions
from lexico_chat.engine.session import ChatSession
from lexico_chat.engine.startup import TrainingCancelled, TrainingProgress
from lexico_chat.errors import MissingDictionaryError
from lexico_chat.lookup import dictionary_filename, missing_dictionary, user_dictionary_folder
from lexico_chat.models import LoadedModel, Status
from lexico_chat.training import DEFAULT_BUDGET_S
from lexico_chat.training.corpus import default_corpus
from lexico_chat.training.plan import TrainingPlan, auto_plan
from lexico_chat.training.trainer import TrainConfig, layers_done, train_dictionary
from lexico_chat.units import duration, human_bytes

__all__ = ["FirstRunTraining", "heldout_line", "open_session"]

logger = logging.getLogger(__name__)

Corpus = tuple[list[str], str]  # texts and the note the dictionary's metadata records


def open_session(
    options: SessionOptions,
    *,
    resume: str | None = None,
    status: Status | None = None,
    offer: bool = True,
    corpus: Corpus | None = None,
    budget_s: float = DEFAULT_BUDGET_S,
) -> ChatSession:
    """Load the model ``options`` name and open a ChatSession on it (``resume``: then load that saved session).

    Where the model has no dictionary, raises MissingDictionaryError; with ``offer`` (the default) it carries
    a ``FirstRunTraining`` (``err.offer``) and its estimate, made by a short probe on this device, and the
    corpus is ``corpus`` or the bundled one, the settings sized to take about ``budget_s`` seconds. ``status``
    hears what loading is doing (for a UI).
    """
    if options.cache.lexico and options.dictionary:
        LexicoDictionary.load(options.dictionary)  # a bad file fails before the slow model load
    loaded = models.load_model(options.model, device=options.device, status=status)
    try:
        dictionary = resolve_dictionary(loaded, options)
    except MissingDictionaryError:
        if not offer:
            raise
        if status:
            status("timing this device for a training estimate…")
        training = FirstRunTraining(loaded, options, resume=resume, corpus=corpus, budget_s=budget_s)
        raise training.missing_error() from None
    return _session(loaded, options, dictionary, resume)


def _session(loaded: LoadedModel, options: SessionOptions, dictionary, resume: str | None) -> ChatSession:
    session = ChatSession(loaded, options, dictionary=dictionary)
    if resume:
        session.resume(resume)
    return session


class FirstRunTraining:
    """A dictionary to train for ``loaded`` (implements ``lexico_chat.engine.startup.TrainingOffer``).

    The settings come from ``plan_training`` (a timed probe of this device), or, when an earlier run left a
    work folder, from that folder, so that the run resumes instead of starting over.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        options: SessionOptions,
        *,
        resume: str | None = None,
        corpus: Corpus | None = None,
        budget_s: float = DEFAULT_BUDGET_S,
    ) -> None:
        self.loaded, self.options, self.resume, self.budget_s = loaded, options, resume, budget_s
        self.model_id, self.atoms = loaded.model_id, options.cache.atoms
        self.out = user_dictionary_folder() / dictionary_filename(self.model_id, self.atoms)
        self.work = Path(f"{self.out}.work")
        self.texts, self.corpus_note = corpus or default_corpus()
        self.layers = loaded.dims.num_layers
        self.plan = self._plan()
        self.result = ""

    def _plan(self) -> TrainingPlan:
        base = TrainConfig(atoms=self.atoms, sparsity=self.options.cache.sparsity, max_vectors=self.atoms)
        return auto_plan(self.loaded, self.texts, self.work, base, self.budget_s)

    @property
    def layers_done(self) -> int:
        return layers_done(self.work)

    @property
    def estimate_s(self) -> float:
        """Seconds still to go (layers already fitted and vectors already collected excluded)."""
        return self.plan.seconds - _Tracker.credit(self.plan, self.layers_done, self._collected)

    @property
    def _collected(self) -> bool:
        return (self.work / "vectors.safetensors").is_file()

    @property
    def disk_bytes(self) -> int:
        return self.plan.disk_bytes

    @property
    def summary(self) -> str:
        done = self.layers_done
        resumed = (
            f"; {done} of {self.layers} layers already done, about {duration(self.estimate_s)} to go" if done else ""
        )
        return (
            f"{self.plan.summary()}{resumed}; needs {human_bytes(self.disk_bytes)} of disk while training, "
            f"keeps {human_bytes(self.plan.output_bytes)}"
        )

    def missing_error(self) -> MissingDictionaryError:
        sparsity = self.options.cache.sparsity
        estimate = f"about {duration(self.estimate_s)} on {self.plan.rates.device}"
        return missing_dictionary(self.model_id, self.atoms, sparsity, estimate=estimate, offer=self)

    def fit(
        self, progress: Callable[[TrainingProgress], None] | None = None, cancel: threading.Event | None = None
    ) -> LexicoDictionary:
        """Train (or resume), write the dictionary, remove the work folder; raises TrainingCancelled."""
        tracker = _Tracker(self.plan, self.layers_done, self._collected, progress, cancel)
        dictionary = train_dictionary(
            self.loaded,
            self.texts,
            self.out,
            self.plan.config,
            corpus_note=f"first-run training on {self.corpus_note}",
            workdir=self.work,
            progress=tracker,
        )
        shutil.rmtree(self.work, ignore_errors=True)
        self.result = heldout_line(dictionary, self.out, self.options.cache.sparsity)
        logger.info("%s", self.result)
        return dictionary

    def train(
        self, progress: Callable[[TrainingProgress], None] | None = None, cancel: threading.Event | None = None
    ) -> ChatSession:
        return _session(self.loaded, self.options, self.fit(progress, cancel), self.resume)


def heldout_line(dictionary: LexicoDictionary, path: Path, sparsity: int) -> str:
    """``dictionary saved to PATH; held-out relative error at s=8: keys 0.140, values 0.300 (...)``."""
    held = dictionary.meta.heldout
    s = str(sparsity) if str(sparsity) in held.get("keys", {}) else str(dictionary.meta.train_sparsity)
    keys, values = held["keys"][s], held["values"][s]
    base = f"{held['sampled_keys'][s]:.3f}, {held['sampled_values'][s]:.3f}"
    return (
        f"dictionary saved to {path}; held-out relative error at s={s}: keys {keys:.3f}, values {values:.3f} "
        f"(a dictionary of sampled vectors: {base})"
    )


class _Tracker:
    """The trainer's ``(stage, done, total)`` callbacks as overall progress, weighted by the plan's estimate
    of each stage; checks ``cancel`` at every callback."""

    def __init__(self, plan: TrainingPlan, done_layers: int, collected: bool, report, cancel) -> None:
        self.plan, self.report, self.cancel = plan, report, cancel
        self.rounds = done_layers * 2 * plan.config.iters
        self.done = self.credit(plan, done_layers, collected)
        self.first, self.start = self.done, time.perf_counter()

    @staticmethod
    def credit(plan: TrainingPlan, done_layers: int, collected: bool) -> float:
        """Estimated seconds of the work an interrupted run already did."""
        return (plan.collect_s if collected or done_layers else 0.0) + done_layers * 2 * plan.config.iters * plan.step_s

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise TrainingCancelled("training cancelled; the layers fitted so far are kept and a rerun resumes")
        if stage == "collect":
            self.done = self.plan.collect_s * done / max(total, 1)
            label = f"reading the corpus: {done:,} of {total:,} tokens"
        else:
            self.rounds += 1
            self.done = self.plan.collect_s + self.rounds * self.plan.step_s
            label = f"fitting {stage.replace(' rre ', ', error ')} (round {done} of {total})"
        if self.report is not None:
            self.report(self._progress(label))

    def _progress(self, label: str) -> TrainingProgress:
        total = self.plan.seconds
        fraction = min(self.done / total, 1.0) if total > 0 else 1.0
        elapsed = time.perf_counter() - self.start
        progressed = self.done - self.first
        eta = elapsed * (total - self.done) / progressed if progressed > 0.02 * total else total - self.done
        return TrainingProgress(fraction, label, elapsed, max(eta, 0.0))
