"""The voice demo: talk to the model and see what the transformer sees.

`python app.py` or `speech-transformer demo` serves a Gradio page on 127.0.0.1: record with the microphone
or upload a file, press Transcribe, and get the transcript, the timing, the log-mel spectrogram the encoder
reads (with the CTC alignment of the tokens under it) and the decoder's cross-attention over the encoder
frames, the alignment picture of attention-based speech recognition. `build` makes the app, `Demo.transcribe`
is its one API endpoint (`/transcribe`), `main` is the command. It works offline: analytics off,
system fonts only, no share link unless asked for.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from speech_transformer import pretrained
from speech_transformer.audio.loading import SAMPLE_RATE, AudioError, info, load_audio
from speech_transformer.decoding.options import METHODS, OPTIONS
from speech_transformer.model.checkpoint import CheckpointError
from speech_transformer.training.data import default_data_dir, read_manifest
from speech_transformer.apps.demo_commands import build_commands_tab
from speech_transformer.apps.demo_live import build_live_transcribe
from speech_transformer.model.transformer import PRESETS
from speech_transformer.recognition.recognizer import Recognition, Recognizer

# gradio is imported where it is used (so `--help` is quick); it reads this when first imported
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if TYPE_CHECKING:
    import gradio as gr

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
MEAN = "mean"  # the cross-attention picture averaged over all decoder layers


@dataclass(frozen=True)
class Limits:
    max_seconds: float = 30.0
    min_seconds: float = 0.25
    max_file_mb: float = 25.0
    silence_dbfs: float = -50.0  # loudest 30 ms of the input quieter than this: nothing to transcribe


def slider(name: str, value: float, label: str, **kwargs):
    """A Gradio slider for one decoding setting, its range from the option table."""
    import gradio as gr

    low, high, step = OPTIONS[name].control
    return gr.Slider(minimum=low, maximum=high, value=value, step=step, label=label, **kwargs)


class Rejected(Exception):
    """An input the demo does not transcribe; the message is for the person who sent it."""


def peak_level_dbfs(wave: np.ndarray, frame: int = 480) -> float:
    """Level of the loudest 30 ms frame of a 16 kHz waveform `(T,)`, in dB relative to full scale."""
    frames = wave[: len(wave) // frame * frame].reshape(-1, frame) if len(wave) >= frame else wave[None]
    rms = np.sqrt(((frames - frames.mean(1, keepdims=True)) ** 2).mean(1).max())
    return float(20 * np.log10(max(rms, 1e-10)))


class Demo:
    """What happens when someone presses Transcribe."""

    def __init__(self, recognizer: Recognizer, limits: Limits = Limits(),
                 more_models: dict[str, Callable[[], Recognizer]] | None = None):
        self.recognizer = recognizer  # the first model
        self.limits = limits
        self.more_models = dict(more_models or {})  # name -> loader, called the first time it is chosen
        self._loaded: dict[str, Recognizer] = {}

    def model(self, name: str | None) -> Recognizer:
        if not name or name not in self.more_models:
            return self.recognizer
        if name not in self._loaded:
            self._loaded[name] = self.more_models[name]()
        return self._loaded[name]

    def transcribe(self, recording: str | tuple | None, beam_size: float | None = None,
                   ctc_weight: float | None = None, layer: str = MEAN, method: str | None = None,
                   model: str | None = None) -> tuple[str, str, np.ndarray | None, np.ndarray | None]:
        """A file path (or a `(rate, array)` recording) -> transcript, details (Markdown), two pictures `(H, W, 3)`.

        Beam size, CTC weight and method ("attention", "ctc" or "lexicon": words from pocketsphinx's English
        vocabulary and 3-gram LM) left out keep the model's preferred decoding; `model` names one of
        `more_models` (default: the first model). Inputs the demo cannot use give an empty transcript, a
        friendly message and no pictures.
        """
        try:
            wave, source = self.load(recording)
        except Rejected as e:
            return "", f"⚠️ {e}", None, None
        recognizer = self.model(model)
        options = recognizer.options.override(method=method or None)  # each search with the model's settings
        if options.method == "attention":  # the sliders are the attention search's
            options = options.override(beam_size=None if beam_size is None else int(beam_size),
                                       ctc_weight=None if ctc_weight is None else float(ctc_weight))
        if recognizer.model.ctc_head is None and options.method != "attention":
            return "", f"⚠️ This model has no CTC head: decoding method {options.method!r} needs one.", None, None
        start = time.perf_counter()
        result = recognizer.recognize([wave], options, align=True, attention=True)[0]
        elapsed = time.perf_counter() - start
        spectrogram, attention = self.pictures(wave, result, layer, recognizer)
        seconds = len(wave) / SAMPLE_RATE
        details = (f"**{seconds:.2f} s** of audio ({source}) · processed in **{elapsed:.2f} s** (with alignment and "
                   f"attention) · real-time factor **{elapsed / seconds:.2f}** · {len(result.tokens)} tokens, mean "
                   f"log-prob {result.avg_logprob:.2f} · {options.describe()}")
        if not result.text.strip():
            details = f"⚠️ The model heard sound but recognised no words: try speaking closer.\n\n{details}"
        return result.text, details, spectrogram, attention

    def load(self, recording: str | tuple | None) -> tuple[np.ndarray, str]:
        """Check and decode an input -> 16 kHz mono waveform `(T,)` and a description of the original."""
        limits = self.limits
        empty = "The recording is empty: nothing was recorded. Check the microphone and record again."
        too_long = ("The clip is {:.1f} s long; this demo takes up to {:g} s. "
                    "For longer audio use the batch transcriber (`speech-transformer transcribe`).")
        if recording is None:
            raise Rejected("No audio yet: record with the microphone or upload a file, then press Transcribe.")
        if isinstance(recording, tuple):
            rate, data = recording if isinstance(recording[0], (int, np.integer)) else recording[::-1]
            data = np.asarray(data)
            if data.size == 0:
                raise Rejected(empty)
            source = f"{rate:,} Hz, {_channels(1 if data.ndim == 1 else min(data.shape))}, {data.dtype}"
        else:
            path = Path(recording)
            size = path.stat().st_size if path.is_file() else 0
            if size > limits.max_file_mb * 1e6:
                raise Rejected(f"The file is {size / 1e6:.1f} MB; this demo takes files up to "
                               f"{limits.max_file_mb:g} MB.")
            try:
                header = info(path)
            except AudioError as e:
                raise Rejected(empty if size == 0 else self._unreadable(e)) from None
            if header.frames == 0:
                raise Rejected(empty)
            if header.duration > limits.max_seconds:
                raise Rejected(too_long.format(header.duration, limits.max_seconds))
            source = f"{header.sample_rate:,} Hz, {_channels(header.channels)}, {header.format}"
        try:
            wave = load_audio(recording)
        except AudioError as e:
            raise Rejected(self._unreadable(e)) from None
        seconds = len(wave) / SAMPLE_RATE
        if seconds > limits.max_seconds:
            raise Rejected(too_long.format(seconds, limits.max_seconds))
        if seconds < limits.min_seconds:
            raise Rejected(f"Only {seconds:.2f} s of audio: too short to hold a word. "
                           f"Record at least {limits.min_seconds:g} s.")
        level = peak_level_dbfs(wave)
        if level < limits.silence_dbfs:
            raise Rejected(f"Only silence was heard (the loudest moment is {level:.0f} dBFS). Check that the right "
                           "microphone is selected and not muted, and speak a little louder.")
        return wave, source + ("" if source.startswith("16,000 Hz, mono") else " → 16 kHz mono")

    @staticmethod
    def _unreadable(e: AudioError) -> str:
        return f"This audio could not be read: {e.reason}. WAV, FLAC, OGG/Opus and MP3 files work."

    @torch.inference_mode()
    def pictures(self, wave: np.ndarray, result: Recognition, layer: str = MEAN,
                 recognizer: Recognizer | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The spectrogram with the CTC alignment under it, and the cross-attention picture `(H, W, 3)` uint8.

        `result` is the Recognizer's, with `align=True, attention=True`: the encoder is not run again.
        """
        recognizer = recognizer or self.recognizer
        model = recognizer.model
        audio = torch.from_numpy(wave)[None].to(model.device)
        log_mel, mel_frames = model.frontend.log_mel(audio, torch.tensor([len(wave)], device=model.device))
        weights = result.cross_attention.mean(1)  # (layers, L+1, S), heads averaged
        weights = weights.mean(0) if layer == MEAN else weights[min(int(layer), len(weights)) - 1]
        pieces = [recognizer.tokenizer.id_to_piece(t).replace("▁", "_") for t in result.decoder_tokens]
        ctc_pieces = [recognizer.ctc_tokenizer.id_to_piece(t).replace("▁", "_") for t in result.ctc_tokens or []]
        seconds = len(wave) / SAMPLE_RATE
        frame_s, offset = model.encoder_frame_seconds, model.encoder_frame_offset
        spans = [(offset + s.start * frame_s, offset + s.end * frame_s) for s in result.spans or []]
        which = f"mean of {len(model.decoder.blocks)} layers" if layer == MEAN else f"layer {layer}"
        return (spectrogram_image(log_mel[0, : int(mel_frames[0])].cpu().numpy(), seconds, ctc_pieces, spans),
                attention_image(weights.cpu().numpy(), seconds, pieces + ["<eos>"], which, frame_s))


def _channels(n: int) -> str:
    return {1: "mono", 2: "stereo"}.get(n, f"{n} channels")


# Pictures, drawn with numpy and PIL: a heat map on a time axis shared by both pictures.

LEFT, RIGHT, TOP, PLOT_W, AXIS_H = 84, 16, 22, 760, 26
VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1], any shape -> viridis-like RGB uint8 `(..., 3)`."""
    x = np.clip(np.nan_to_num(values), 0.0, 1.0) * (len(VIRIDIS) - 1)
    i = np.minimum(x.astype(int), len(VIRIDIS) - 2)
    f = (x - i)[..., None]
    return (VIRIDIS[i] * (1 - f) + VIRIDIS[i + 1] * f).round().astype(np.uint8)


@lru_cache(maxsize=None)
def _font(size: int = 12) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _time_axis(draw: ImageDraw.ImageDraw, y: int, seconds: float) -> None:
    step = next((s for s in (0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60) if seconds / s <= 10), 300)
    draw.line([(LEFT, y), (LEFT + PLOT_W, y)], fill=(90, 90, 90))
    for k in range(int(seconds / step + 1e-9) + 1):
        x = LEFT + k * step / seconds * PLOT_W
        draw.line([(x, y), (x, y + 4)], fill=(90, 90, 90))
        draw.text((x, y + 6), f"{k * step:g}", fill=(60, 60, 60), font=_font(11), anchor="mt")
    draw.text((LEFT + PLOT_W, y + 6), "s", fill=(60, 60, 60), font=_font(11), anchor="lt")


def spectrogram_image(log_mel: np.ndarray, seconds: float, pieces: list[str],
                      spans: list[tuple[float, float]], top_db: float = 80.0) -> np.ndarray:
    """Log-mel `(F, n_mels)` (natural log of power) over `seconds`, and under it each token at its CTC
    start time (spans in seconds) -> RGB `(H, W, 3)`. Shows the loudest `top_db` dB."""
    floor = log_mel.max() - top_db * math.log(10) / 10
    heat = colormap((log_mel.T[::-1] - floor) / (log_mel.max() - floor + 1e-9))  # low frequencies at the bottom
    plot_h, rows = 2 * log_mel.shape[1], 3
    strip = TOP + plot_h + 4
    height = strip + rows * 14 + 4 + AXIS_H
    canvas = Image.new("RGB", (LEFT + PLOT_W + RIGHT, height), "white")
    canvas.paste(Image.fromarray(heat).resize((PLOT_W, plot_h), Image.BILINEAR), (LEFT, TOP))
    draw = ImageDraw.Draw(canvas)
    draw.text((LEFT, 4), "log-mel spectrogram the encoder reads (80 bands, 10 ms frames); below: CTC alignment",
              fill=(30, 30, 30), font=_font(12))
    draw.text((LEFT - 6, TOP), "8 kHz", fill=(60, 60, 60), font=_font(11), anchor="rt")
    draw.text((LEFT - 6, TOP + plot_h), "0 Hz", fill=(60, 60, 60), font=_font(11), anchor="rb")
    draw.text((LEFT - 6, strip), "tokens", fill=(60, 60, 60), font=_font(11), anchor="rt")
    for i, (piece, (start, _)) in enumerate(zip(pieces, spans)):
        x = LEFT + min(start / seconds, 1.0) * PLOT_W
        y = strip + (i % rows) * 14
        draw.line([(x, TOP + plot_h - 6), (x, y + 12)], fill=(230, 80, 40))
        draw.text((x + 2, y), piece, fill=(20, 20, 20), font=_font(11))
    _time_axis(draw, height - AXIS_H, seconds)
    return np.asarray(canvas)


def attention_image(weights: np.ndarray, seconds: float, labels: list[str], which: str,
                    frame_seconds: float) -> np.ndarray:
    """Cross-attention `(L + 1, S)`, a row per output token (labels), a column per encoder frame
    -> RGB `(H, W, 3)`, each row scaled to its own maximum, on the same time axis as the spectrogram."""
    rows, frames = weights.shape
    row_h = max(3, min(18, 420 // rows))
    heat = colormap(weights / (weights.max(1, keepdims=True) + 1e-12))
    width = max(1, round(min(frames * frame_seconds / seconds, 1.0) * PLOT_W))
    height = TOP + rows * row_h + 4 + AXIS_H
    canvas = Image.new("RGB", (LEFT + PLOT_W + RIGHT, height), "white")
    canvas.paste(Image.fromarray(heat).resize((width, rows * row_h), Image.NEAREST), (LEFT, TOP))
    draw = ImageDraw.Draw(canvas)
    draw.text((LEFT, 4), f"decoder cross-attention over the encoder frames ({which}, heads averaged): "
                         "a row per output token", fill=(30, 30, 30), font=_font(12))
    every = math.ceil(11 / row_h)
    for i, label in enumerate(labels):
        if i % every == 0:
            draw.text((LEFT - 6, TOP + (i + 0.5) * row_h), label, fill=(20, 20, 20),
                      font=_font(min(11, row_h * every - 1)), anchor="rm")
    _time_axis(draw, height - AXIS_H, seconds)
    return np.asarray(canvas)


# The model card, the examples and the page.

def model_card(recognizer: Recognizer, model_dir: Path | None = None) -> str:
    """Markdown: preset, size, training data and any WER numbers from config.json, then MODEL_CARD.md if present."""
    extra = dict(recognizer.info.get("info", {}))
    c = recognizer.model.config
    preset = extra.pop("preset", None) or next(
        (name for name, p in PRESETS.items() if (p.d_model, p.n_heads, p.d_ff, p.encoder_layers, p.decoder_layers)
         == (c.d_model, c.n_heads, c.d_ff, c.encoder_layers, c.decoder_layers)), "custom")
    name = model_dir.name if model_dir is not None else "model"
    lines = [f"**Model** `{name}`: preset **{preset}**, {recognizer.model.num_parameters() / 1e6:.1f} M parameters: "
             f"{c.encoder_layers} encoder and {c.decoder_layers} decoder layers, width {c.d_model}, {c.n_heads} heads, "
             f"{c.vocab_size}-token vocabulary, "
             f"{c.normalization + ' feature normalisation' if c.frontend == 'log_mel' else 'Whisper features'}."]
    train = extra.pop("train", None)
    if train:
        lines.append(f"**Training data**: {', '.join(map(str, train)) if isinstance(train, list) else train}")
    for key in [k for k in extra if "wer" in k.lower()]:
        value = extra.pop(key)
        shown = ", ".join(f"{k}: {v}" for k, v in value.items()) if isinstance(value, dict) else value
        lines.append(f"**{key}**: {shown}")
    for key, value in extra.items():
        if isinstance(value, (str, int, float, bool)) or (isinstance(value, list) and len(value) <= 8):
            lines.append(f"**{key}**: {value}")
    card = model_dir / "MODEL_CARD.md" if model_dir is not None else None
    if card is not None and card.is_file():
        lines.append("\n---\n\n" + card.read_text(encoding="utf-8"))
    return "\n\n".join(lines)


def find_examples(data_dir: Path | None = None, max_seconds: float = 30.0) -> list[tuple[str, str]]:
    """Real clips from the shared data folder's samples, when it is there: (path, label), shortest first."""
    data_dir = default_data_dir() if data_dir is None else data_dir
    manifests = [data_dir / "librispeech" / "samples" / "samples.tsv", data_dir / "samples" / "samples.tsv"]
    clips = [u for manifest in manifests if manifest.is_file() for u in read_manifest(manifest)]
    return [(u.audio, f"{Path(u.audio).name} ({u.duration:.1f} s)")
            for u in sorted(clips, key=lambda u: u.duration) if u.duration <= max_seconds and Path(u.audio).is_file()]


def build(recognizer: Recognizer, limits: Limits = Limits(), model_dir: Path | None = None,
          examples: list[tuple[str, str]] = (), more_models: dict[str, Callable[[], Recognizer]] | None = None
          ) -> gr.Blocks:
    """The Gradio page around `Demo(recognizer, limits, more_models).transcribe` (API name `transcribe`).

    With `more_models` (name -> loader, e.g. the installed Whisper base), a model choice appears.
    """
    import gradio as gr

    demo = Demo(recognizer, limits, more_models)
    layers = [MEAN] + [str(i) for i in range(1, len(recognizer.model.decoder.blocks) + 1)]
    with gr.Blocks(title="speech_transformer: talk to the transformer", analytics_enabled=False) as blocks:
        gr.Markdown(
            "# Talk to the transformer\n"
            f"Record with the microphone or upload a file (up to {limits.max_seconds:g} s, any sample rate and "
            "channel count), then press **Transcribe**. Under the transcript: the log-mel spectrogram the encoder "
            "reads, with the CTC head's alignment of each token, and the decoder's cross-attention, where each "
            "output token looked in the audio.")
        with gr.Tab("Transcribe", elem_id="tab-transcribe"):
            _transcribe_tab(demo, model_dir, examples, layers)
            with gr.Accordion("Live: the transcript as you speak", open=True, elem_id="live"):
                build_live_transcribe(lambda: demo.recognizer)
        with gr.Tab("Voice control", elem_id="tab-commands"):
            gr.Markdown("The article's voice-controlled computer: a grammar of commands, matched by this model; "
                        "anything else is rejected.")
            build_commands_tab(lambda: demo.recognizer)
        with gr.Accordion("Model card", open=False):
            gr.Markdown(model_card(recognizer, model_dir), elem_id="model-card")
    return blocks


def _transcribe_tab(demo: Demo, model_dir: Path | None, examples: list[tuple[str, str]], layers: list[str]) -> None:
    """The widgets of the transcription tab, inside the Blocks being built."""
    import gradio as gr

    recognizer = demo.recognizer
    with gr.Row():
        with gr.Column(scale=2):
            recording = gr.Audio(sources=["microphone", "upload"], type="filepath", label="Speech",
                                 buttons=["download"], elem_id="audio")
            with gr.Row():
                preferred = recognizer.options  # the model's preferred decoding
                beam = slider("beam_size", preferred.attention.beam_size, "Beam size")
                ctc = slider("ctc_weight", preferred.attention.ctc_weight, "CTC weight",
                            interactive=recognizer.model.ctc_head is not None)
            method = gr.Dropdown(list(METHODS), value=preferred.method, label="Decoding",
                                 info="attention: the decoder writes; ctc: CTC greedy; lexicon: English words "
                                      "and a 3-gram LM over the CTC head")
            layer = gr.Dropdown(layers, value=MEAN, label="Cross-attention layer (mean: all layers)")
            first = f"{(model_dir or Path('model')).name} (this demo's model)"
            choice = gr.Dropdown([first, *demo.more_models], value=first, label="Model", elem_id="model",
                                 visible=bool(demo.more_models),
                                 info="Whisper base runs in this project's own transformer code, offline")
            button = gr.Button("Transcribe", variant="primary", elem_id="transcribe")
            if examples:
                gr.Examples([[path] for path, _ in examples], inputs=[recording], label="Example clips",
                            example_labels=[label for _, label in examples])
        with gr.Column(scale=3):
            transcript = gr.Textbox(label="Transcript", lines=2, interactive=False, elem_id="transcript")
            details = gr.Markdown(elem_id="details")
            spectrogram = gr.Image(label="Spectrogram and CTC alignment", show_label=False, format="png",
                                   interactive=False, buttons=["download", "fullscreen"], elem_id="spectrogram")
            attention = gr.Image(label="Cross-attention", show_label=False, format="png", interactive=False,
                                 buttons=["download", "fullscreen"], elem_id="attention")
    inputs = [recording, beam, ctc, layer, method] + ([choice] if demo.more_models else [])
    button.click(demo.transcribe, inputs, [transcript, details, spectrogram, attention], api_name="transcribe")


def launch(blocks: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
           limits: Limits = Limits(), concurrency: int = 1, queue_size: int = 32, prevent_thread_lock: bool = False,
           allowed_paths: list[str] | None = None):
    """Serve with a queue: `concurrency` requests decode at once, up to `queue_size` wait their turn."""
    import gradio as gr

    blocks.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)  # no web fonts to fetch
    return blocks.launch(server_name=host, server_port=port, share=share, theme=theme, ssr_mode=False,
                         max_file_size=int(limits.max_file_mb * 1e6), prevent_thread_lock=prevent_thread_lock,
                         allowed_paths=allowed_paths, show_error=True)


def installed_whisper(device: str, name: str = "base") -> dict[str, Callable[[], Recognizer]]:
    """`whisper:NAME` as a second model when an installed copy exists (converted on first use, no download)."""
    from speech_transformer.importers import whisper

    folder, _ = whisper.installed_folder(name)
    if folder is None:
        return {}
    return {f"whisper:{name}": lambda: Recognizer.from_dir(whisper.resolve(name), device)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="speech-transformer demo",
                                description="Serve the voice demo: microphone or file in, transcript and pictures out.")
    p.add_argument("--model", help="model directory or shipped model name (default: the embedded default model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-seconds", type=float, default=Limits.max_seconds, help="longest clip accepted")
    p.add_argument("--max-file-mb", type=float, default=Limits.max_file_mb, help="largest upload accepted")
    p.add_argument("--concurrency", type=int, default=1, help="requests decoded at once; others wait in the queue")
    p.add_argument("--queue-size", type=int, default=32, help="requests that may wait; more are turned away")
    p.add_argument("--no-examples", action="store_true", help="do not offer the shared data folder's sample clips")
    p.add_argument("--no-whisper", action="store_true", help="do not offer the installed Whisper base as a second model")
    args = p.parse_args(argv)
    try:
        model_dir = pretrained.resolve(args.model)
        recognizer = Recognizer.from_dir(model_dir, args.device)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        print(f"speech-transformer demo: {e}", file=sys.stderr)
        return 2
    limits = Limits(max_seconds=args.max_seconds, max_file_mb=args.max_file_mb)
    examples = [] if args.no_examples else find_examples(max_seconds=limits.max_seconds)
    blocks = build(recognizer, limits, model_dir, examples, {} if args.no_whisper else installed_whisper(args.device))
    launch(blocks, args.host, args.port, args.share, limits, args.concurrency, args.queue_size,
           allowed_paths=sorted({str(Path(path).parent) for path, _ in examples}))
    return 0
