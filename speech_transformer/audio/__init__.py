"""Audio in: any file, bytes or array -> 16 kHz mono float32 (`loading`), inputs expanded from files, folders,
globs and manifests (`sources`), voice activity (`vad`), and the log-mel front end (`features`)."""
