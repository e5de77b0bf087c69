"""Voice commands: grammars (own format and JSGF, `grammar`; shipped ones in `grammars/`) and matching an
utterance to a command with its slots, confidence and rejection (`matching`)."""
