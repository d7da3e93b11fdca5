"""The LM side of a VLM: causal LMs built from a `TextConfig` (vtlab.text.lm) and an offline tokenizer
(vtlab.text.tokenizer) for random-weight LMs."""
