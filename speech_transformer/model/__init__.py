"""The model: the transformer with its CTC head and decoder (`transformer`), model directories on disk
(`checkpoint`), CTC forced alignment to token and word times (`align`), cross-attention maps (`attention_maps`)."""
