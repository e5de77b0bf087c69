"""Training: manifests, datasets and samplers (`data`), the trainer (`trainer`, also under torchrun),
LibriSpeech downloads (`download`), synthetic speech from offline voices (`synthetic`)."""
