"""The demo's live listening: Gradio's streaming microphone into a `StreamingRecognizer` per browser session.

`live_step` queues one microphone chunk for the session's recogniser (made on its first chunk, with a worker
thread of its own) and returns the session with the events recognised since; `build_live_transcribe` adds the Transcribe tab's live mode (the partial text
as you speak, finals appended below). The Voice control tab (`demo_commands`) listens the same way with a
grammar.
"""

from __future__ import annotations

import queue
import threading
from functools import lru_cache
from typing import Callable

import numpy as np

from speech_transformer.recognition.streaming import Event, StreamingRecognizer

STREAM_EVERY = 0.25  # s of microphone audio per chunk the browser sends


@lru_cache(maxsize=1)
def shared_vad():
    """One Silero VAD for every session (its batched scorer keeps no state of its own)."""
    from speech_transformer.audio.vad import SileroVad

    return SileroVad()


class LiveSession:
    """One browser session's recogniser, fed by its own worker thread.

    Gradio hands a streaming handler the newest chunk only, so chunks that come while the handler is still
    busy are lost: the handler only queues its chunk (`feed`), and the worker recognises them in order.
    Events pile up in `events` until the page takes them (`take`). A worker idle for `IDLE_SECONDS` ends.
    """

    IDLE_SECONDS = 60.0

    def __init__(self, stream: StreamingRecognizer, grammar_text: str | None = None):
        self.stream, self.grammar_text = stream, grammar_text
        self.partial, self.finals, self.events = "", [], []
        self.inbox: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.worker = threading.Thread(target=self._work, daemon=True)
        self.worker.start()

    def feed(self, chunk) -> None:
        rate, data = chunk
        if np.asarray(data).size:  # with its arrival: latencies count from it, and a stream behind catches up
            self.inbox.put((int(rate), np.asarray(data), self.stream.clock()))

    def stop(self) -> None:
        """Recognise what is queued, then flush the open utterance."""
        self.inbox.put(None)
        self.worker.join()
        self._note(self.stream.flush())

    def take(self) -> list[Event]:
        with self.lock:
            events, self.events = self.events, []
        return events

    def _work(self) -> None:
        while True:
            try:
                item = self.inbox.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                return
            if item is None:
                return
            rate, data, arrival = item
            self._note(self.stream.accept(data, rate, arrival))

    def _note(self, events: list[Event]) -> None:
        with self.lock:
            for e in events:
                if e.type == "partial":
                    self.partial = e.text
                elif e.type in ("final", "command", "rejected"):
                    self.partial = ""
                    if e.type == "final" and e.text:
                        self.finals.append(e.text)
            self.events += events


def live_step(session: LiveSession | None, chunk, recognizer, grammar=None, grammar_text: str | None = None,
              stop: bool = False) -> tuple[LiveSession | None, list[Event]]:
    """One `(rate, samples)` microphone chunk (None: nothing new) -> the session and the events recognised
    since the last step. `stop` flushes the open utterance and ends the session; a new grammar starts a new one."""
    if session is None or session.grammar_text != grammar_text:
        if session is not None:
            session.stop()
        if chunk is None:
            return None, []
        session = LiveSession(StreamingRecognizer(recognizer, grammar=grammar, vad=shared_vad()), grammar_text)
    if chunk is not None:
        session.feed(chunk)
    if stop:
        session.stop()
    return (None if stop else session), session.take()


def build_live_transcribe(get_recognizer: Callable[[], object]) -> None:
    """The Transcribe tab's live mode, inside the Blocks being built: talk, watch the text appear."""
    import gradio as gr

    with gr.Row():
        with gr.Column(scale=2):
            live = gr.Audio(sources=["microphone"], streaming=True, type="numpy", label="Live: press record and talk",
                            elem_id="live-audio")
        with gr.Column(scale=3):
            partial = gr.Textbox(label="Hearing…", lines=1, interactive=False, elem_id="live-partial")
            finals = gr.Textbox(label="Live transcript", lines=4, interactive=False, elem_id="live-finals")
    state = gr.State(None)

    def on_chunk(chunk, session):
        session, _ = live_step(session, chunk, get_recognizer())
        return *((session.partial, "\n".join(session.finals)) if session else ("", "")), session

    def on_stop(session):
        live_step(session, None, get_recognizer(), stop=True)  # the session's last finals are added to it
        return "", "\n".join(session.finals) if session else "", None

    live.stream(on_chunk, [live, state], [partial, finals, state], stream_every=STREAM_EVERY, time_limit=600,
                api_name="live", concurrency_limit=1)
    live.stop_recording(on_stop, [state], [partial, finals, state], api_name="live_stop")
