"""The demo's voice-control tab: the voice-controlled computer of "Transformer from scratch".

`build_commands_tab(get_recognizer)` adds, inside an open gradio Blocks/Tab, a grammar box (pre-filled with
`grammars/desktop.txt`), a microphone/upload input and a small on-screen computer: windows open and close
when named, a volume bar moves, a typed-number field fills in. Each command shows its phrase, slots and
confidence; speech the grammar cannot say is "not understood" and changes nothing. It also listens
continuously (`listen_step`): each command is acted on as soon as its utterance ends, without a button.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, replace
from typing import Callable

from speech_transformer.commands.matching import CommandMatch, MatchOptions, match
from speech_transformer.commands.grammar import GRAMMAR_DIR, Grammar, GrammarError
from speech_transformer.apps.demo_live import STREAM_EVERY

VOLUME_STEP = 10


@dataclass(frozen=True)
class Computer:
    """What the on-screen computer shows."""

    windows: tuple[str, ...] = ()  # open apps, the focused one last
    volume: int = 50  # 0..100
    muted: bool = False
    typed: str = ""
    scroll: int = 0
    last: str = ""  # the last answer or key

    def apply(self, m: CommandMatch) -> "Computer":
        """The computer after command `m` (actions of grammars/desktop.txt; others only show)."""
        words, app = m.text.split(), m.slots.get("app")
        if m.action in ("open", "switch") and app:
            return replace(self, windows=tuple(w for w in self.windows if w != app) + (app,))
        if m.action == "close" and app:
            return replace(self, windows=tuple(w for w in self.windows if w != app))
        if m.action == "volume":
            step = VOLUME_STEP if "UP" in words else -VOLUME_STEP
            return replace(self, volume=max(0, min(100, self.volume + step)), muted=False)
        if m.action == "mute":
            return replace(self, muted=words[0] == "MUTE")
        if m.action == "type" and "number" in m.slots:
            return replace(self, typed=self.typed + m.slots["number"])
        if m.action == "scroll":
            return replace(self, scroll=self.scroll + (-1 if "UP" in words else 1))
        return replace(self, last=m.text.lower())


def render(c: Computer) -> str:
    """The computer as HTML: a desktop with windows, a volume bar and a text field."""
    windows = "".join(
        f'<div class="st-window{" st-focus" if k == len(c.windows) - 1 else ""}" data-app="{html.escape(w)}" '
        f'style="left:{12 + 26 * k}px;top:{12 + 22 * k}px"><b>{html.escape(w)}</b></div>'
        for k, w in enumerate(c.windows))
    level = 0 if c.muted else c.volume
    return (
        '<div class="st-computer" style="font-family:system-ui,sans-serif">'
        '<div style="position:relative;height:150px;background:#2b5b84;border-radius:6px">'
        f'{windows}</div>'
        '<style>.st-window{position:absolute;width:150px;height:70px;background:#eee;border:1px solid #444;'
        'border-radius:4px;padding:4px}.st-focus{border:2px solid #f90}</style>'
        f'<div>volume{" (muted)" if c.muted else ""}: <span class="st-volume" data-level="{level}" '
        f'style="display:inline-block;width:200px;height:10px;background:#ccc">'
        f'<span style="display:block;width:{2 * level}px;height:10px;background:#2a2"></span></span> {level}</div>'
        f'<div>typed: <input class="st-typed" readonly value="{html.escape(c.typed)}"></div>'
        f'<div>scrolled: {c.scroll} {"· last: " + html.escape(c.last) if c.last else ""}</div></div>')


def describe(m: CommandMatch | None) -> str:
    if m is None:
        return "**Not understood** (nothing the grammar can say)."
    slots = ", ".join(f"{k} = {v}" for k, v in m.slots.items()) or "none"
    return (f"**{m.text.lower()}** → action `{m.action}` · slots: {slots} · "
            f"confidence {m.confidence:.2f} · fit {m.llr:.1f} nats")


def run_command(recognizer, audio, grammar_text: str, computer: Computer,
                options: MatchOptions | None = None) -> tuple[str, str, Computer]:
    """One spoken command -> (result Markdown, computer HTML, new computer state); `options` default to
    the model's."""
    from speech_transformer.audio.loading import AudioError, load_audio

    try:
        grammar = Grammar.parse_text(grammar_text, "grammar box")
    except GrammarError as e:
        return f"**Grammar error** {html.escape(str(e))}", render(computer), computer
    if audio is None:
        return "Record or upload a command first.", render(computer), computer
    try:
        wave = load_audio(audio)
    except AudioError as e:
        return f"**Cannot read the audio**: {html.escape(e.reason)}", render(computer), computer
    (m,) = match(recognizer, [wave], grammar, options)
    if m is not None:
        computer = computer.apply(m)
    return describe(m), render(computer), computer


def listen_step(recognizer, session, chunk, grammar_text: str, computer: Computer, stop: bool = False
                ) -> tuple[object, str | None, Computer]:
    """One microphone chunk of continuous listening -> (session, result Markdown of the last command or
    rejection heard in it, None if none; the computer after every command in it)."""
    from speech_transformer.apps.demo_live import live_step

    try:
        grammar = Grammar.parse_text(grammar_text, "grammar box")
    except GrammarError as e:
        return None, f"**Grammar error** {html.escape(str(e))}", computer
    session, events = live_step(session, chunk, recognizer, grammar, grammar_text, stop)
    said = None
    for e in events:
        if e.type == "command":
            m = CommandMatch(e.text, e.command["action"], e.command["slots"], e.command["confidence"], 0.0,
                             e.command["llr"], 0.0)
            computer = computer.apply(m)
            said = describe(m) + f" · heard {e.latency_s:.2f} s after you stopped"
        elif e.type == "rejected":
            said = describe(None) + (f" Heard: “{html.escape(e.text.lower())}”" if e.text else "")
    return session, said, computer


def build_commands_tab(get_recognizer: Callable[[], object]) -> None:
    """Add the voice-control widgets to the gradio Blocks/Tab being built."""
    import gradio as gr

    start = Computer()
    with gr.Row():
        with gr.Column():
            grammar = gr.Textbox(value=(GRAMMAR_DIR / "desktop.txt").read_text(), lines=14, label="Grammar",
                                 elem_id="commands-grammar")
            audio = gr.Audio(sources=["microphone", "upload"], type="filepath", label="Say a command",
                             elem_id="commands-audio")
            button = gr.Button("Run command", variant="primary", elem_id="commands-run")
            listen = gr.Audio(sources=["microphone"], streaming=True, type="numpy", elem_id="commands-listen",
                              label="Or listen continuously: press record, then say one command after another")
        with gr.Column():
            result = gr.Markdown("Say e.g. “open the browser”, “volume up”, “type forty two”.",
                                 elem_id="commands-result")
            screen = gr.HTML(render(start), elem_id="commands-computer")
    state = gr.State(start)

    def on_run(audio_in, grammar_text, computer):
        return run_command(get_recognizer(), audio_in, grammar_text, computer)

    button.click(on_run, [audio, grammar, state], [result, screen, state], api_name="command")
    session = gr.State(None)

    def on_listen(chunk, grammar_text, computer, live, stop=False):
        live, said, computer = listen_step(get_recognizer(), live, chunk, grammar_text, computer, stop)
        return gr.update() if said is None else said, render(computer), computer, live

    outputs = [result, screen, state, session]
    listen.stream(on_listen, [listen, grammar, state, session], outputs, stream_every=STREAM_EVERY, time_limit=600,
                  api_name="listen", concurrency_limit=1)
    listen.stop_recording(lambda g, c, s: on_listen(None, g, c, s, stop=True), [grammar, state, session], outputs,
                          api_name="listen_stop")
