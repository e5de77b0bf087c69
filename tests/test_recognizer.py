"""End to end: a tiny model learns five real utterances, then the saved model transcribes them."""

import torch

from speech_transformer.audio import load_audio
from speech_transformer.checkpoint import save_model
from speech_transformer.decoding import DecodingOptions
from speech_transformer.features import pad_waveforms
from speech_transformer.model import SpeechTransformer, preset
from speech_transformer.recognizer import Recognizer


def test_tiny_model_overfits_five_real_utterances(tmp_path, tokenizer, librispeech_train):
    chosen = sorted(librispeech_train, key=lambda u: u.duration)[:5]
    waves = [load_audio(u.audio) for u in chosen]
    torch.manual_seed(0)
    model = SpeechTransformer(preset("tiny", vocab_size=tokenizer.vocab_size, d_model=144, d_ff=576,
                                     encoder_layers=4, decoder_layers=2, dropout=0.0))
    model.frontend.fit_global_stats(waves)
    with torch.no_grad():
        feats, feat_lengths = model.frontend(*pad_waveforms(waves))
    ids = [tokenizer.encode(u.text) for u in chosen]
    targets = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
    for i, x in enumerate(ids):
        targets[i, : len(x)] = torch.tensor(x)
    target_lengths = torch.tensor([len(x) for x in ids])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    recognizer = Recognizer(model, tokenizer)
    options = DecodingOptions(beam_size=3, ctc_weight=0.3)
    texts: list[str] = []
    for step in range(1, 201):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * min(1.0, step / 30)
        loss = model(feats, feat_lengths, targets, target_lengths, ctc_weight=0.3, label_smoothing=0.0)
        optimizer.zero_grad()
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        if step % 25 == 0:
            texts = [r.text for r in recognizer.recognize(waves, options)]
            if texts == [u.text for u in chosen]:
                break
    assert texts == [u.text for u in chosen]
    # the saved directory reproduces the same transcripts, with beam search and greedy
    loaded = Recognizer.from_dir(save_model(model, tokenizer, tmp_path / "model"))
    assert [r.text for r in loaded.recognize(waves, options)] == texts
    assert [r.text for r in loaded.recognize(waves, DecodingOptions(beam_size=1, ctc_weight=0.0))] == texts
