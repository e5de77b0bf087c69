"""The demo's voice-control tab: real clips drive the on-screen computer; the tab builds inside gradio."""

from __future__ import annotations

import pytest
import torch

from speech_transformer.audio.loading import load_audio
from speech_transformer.training.data import read_manifest
from speech_transformer.apps.demo_commands import Computer, build_commands_tab, run_command


@pytest.fixture(scope="module")
def recognizer():
    from speech_transformer.recognition.recognizer import Recognizer

    torch.set_num_threads(1)
    return Recognizer.from_dir(None)


def test_spoken_commands_drive_the_computer(recognizer, data_dir):
    an4 = read_manifest(data_dir / "an4" / "train.tsv")
    clip = next(u for u in an4 if u.text == "ENTER FIFTY FOUR")
    grammar = "enter {number} -> type\n(yes | no) -> answer\n"
    text, screen, computer = run_command(recognizer, str(clip.audio), grammar, Computer())
    assert computer.typed == "54" and 'value="54"' in screen
    assert "number = 54" in text and "`type`" in text

    sentence = read_manifest(data_dir / "librispeech" / "samples" / "samples.tsv")[0]
    text, _, after = run_command(recognizer, (16000, load_audio(sentence.audio)), grammar, computer)
    assert text.startswith("**Not understood**") and after == computer

    text, _, after = run_command(recognizer, str(clip.audio), "# mine\nopen (the {app}\n", computer)
    assert "grammar box:2:" in text and after == computer


def test_the_computer_reacts_to_desktop_actions():
    from speech_transformer.commands.matching import CommandMatch

    c = Computer()
    for text, action, slots in [("OPEN THE BROWSER", "open", {"app": "browser"}), ("OPEN MAIL", "open", {"app": "mail"}),
                                ("CLOSE BROWSER", "close", {"app": "browser"}), ("VOLUME UP", "volume", {}),
                                ("TYPE FORTY TWO", "type", {"number": "42"})]:
        c = c.apply(CommandMatch(text, action, slots, 1.0, 0.0, 0.0, 0.0))
    assert c.windows == ("mail",) and c.volume == 60 and c.typed == "42"


def test_the_tab_builds_inside_blocks(recognizer):
    import gradio as gr

    with gr.Blocks() as app:
        with gr.Tab("Voice control"):
            build_commands_tab(lambda: recognizer)
    assert "command" in {d.api_name for d in app.fns.values()}


def test_listening_continuously_acts_on_each_command(recognizer, data_dir):
    """Microphone chunks (48 kHz int16, as browsers send them) of two commands in a row, no button."""
    import numpy as np
    import torchaudio.functional as AF

    from speech_transformer.apps.demo_commands import listen_step

    an4 = read_manifest(data_dir / "an4" / "train.tsv")
    clip = next(u for u in an4 if u.text == "ENTER FIFTY FOUR")
    pause = np.zeros(16_000, np.float32)
    speech = torch.from_numpy(np.concatenate([pause, load_audio(clip.audio), pause, load_audio(clip.audio), pause]))
    mic = (AF.resample(speech, 16_000, 48_000).numpy() * 32767).astype(np.int16)
    grammar = "enter {number} -> type\n(yes | no) -> answer\n"
    session, computer, said = None, Computer(), []
    for i in range(0, len(mic), 12_000):  # 0.25 s chunks
        session, text, computer = listen_step(recognizer, session, (48_000, mic[i:i + 12_000]), grammar, computer)
        said += [text] if text else []
    session, text, computer = listen_step(recognizer, session, None, grammar, computer, stop=True)
    said += [text] if text else []
    assert session is None and computer.typed == "5454", said
    assert all("number = 54" in t for t in said) and len(said) <= 2
