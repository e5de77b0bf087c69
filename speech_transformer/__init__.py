"""speech_transformer: audio -> features -> model -> decoding -> text.

    audio/       loading any file to 16 kHz mono, input sources, voice activity, log-mel features
    text/        transcript normalisation, tokenizers, WER/CER scoring
    model/       the transformer (encoder + CTC head + decoder), model files, alignment, attention maps
    decoding/    the searches (CTC, attention greedy/beam with scorers, lexicon + word LM), token and word LMs
    recognition/ the one path from waveforms to text that every use shares, and live listening
    commands/    voice-command grammars and matching
    training/    manifests and datasets, the trainer, downloads, synthetic speech
    importers/   Whisper weights (openai, Hugging Face, CTranslate2) into our model class
    apps/        what people run: the command line, transcription, evaluation, listening, the demo
    pretrained/  the embedded default model
    utils/       files written atomically, downloads, process facts (memory, torchrun set-up)
"""
