"""Text: transcript normalisation and number words (`normalize`), the tokenizers (`tokenizer`), and WER/CER
with a named normaliser (`scoring`)."""
