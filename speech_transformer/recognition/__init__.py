"""Recognition: the one path from waveforms to text that every use shares (`recognizer`: padded batches ->
front end -> encoder -> decoding -> text, word times, attention), and live listening on top of it
(`streaming`: audio blocks in, partial and final events out)."""
