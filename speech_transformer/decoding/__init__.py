"""Decoding: encoder states -> token sequences. The searches and their pieces (`search`), the word-level
lexicon search (`lexicon`), a token n-gram LM for shallow fusion (`token_lm`), word n-gram LMs (`arpa`)."""
