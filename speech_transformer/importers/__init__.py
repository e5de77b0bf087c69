"""Importers: Whisper's weights (openai `.pt`, Hugging Face, CTranslate2/faster-whisper) into our own model
class (`whisper`), CTranslate2's `model.bin` read from the bytes (`ctranslate2`)."""
