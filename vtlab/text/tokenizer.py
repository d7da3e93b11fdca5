"""An offline tokenizer for random-weight LMs: a `tokenizers` WordLevel model over a fixed vocabulary.

No tokenizer can be downloaded here, and a random LM needs none of a real one's merges: what matters is that
every family's image tokens (`<image>`, Idefics3's `<fake_token_around_image>`, `<global-img>`,
`<row_r_col_c>`) are single special tokens, that the chat roles exist, and that ordinary words map to
stable ids. The result is a transformers `PreTrainedTokenizerFast` with a SmolVLM-style chat template
(`<|im_start|>User:...<end_of_utterance>\\nAssistant:`), so the VLM builds prompts exactly as it does with a
real tokenizer. Mirrors nothing upstream; ids are small (specials first), so any vocab_size >= `len(tok)` fits.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

from vtlab.errors import ConfigError

SPECIALS = ("<unk>", "<pad>", "<|endoftext|>", "<|im_start|>", "<end_of_utterance>")
# every family's image tokens (vtlab.families: Family.special_tokens): one vocabulary serves them all
IMAGE_TOKENS = ("<image>", "<fake_token_around_image>", "<global-img>",
                *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)))
WORDS = ("user", "assistant", "describe", "this", "image", "what", "is", "in", "the", "a", "an", "of", "and", "how",
         "many", "are", "there", "count", "picture", "photo", "answer", "question", "yes", "no", "color", "left",
         "right", "top", "bottom", "cat", "dog", "red", "green", "blue", "plus", "cross", "sign", "signs", "glyph")
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] | capitalize }}:{{ m['content'] }}<end_of_utterance>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>Assistant:{% endif %}")


def word_pieces(words: Sequence[str]) -> list[str]:
    """`words` as the offline tokenizer splits them (lowercase, `Whitespace` pre-tokenizer: "it's" -> it ' s)."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Whitespace()
    return [piece for word in words for piece, _ in split.pre_tokenize_str(str(word).lower())]


def offline_vocabulary(extra_specials: Sequence[str] = (), extra_words: Sequence[str] = ()) -> dict[str, int]:
    """token -> id of the offline tokenizer: specials first, then the fixed words, then `extra_words`' pieces."""
    specials = list(dict.fromkeys([*SPECIALS, *IMAGE_TOKENS, *extra_specials]))
    plain = list(dict.fromkeys([*WORDS, *string.ascii_lowercase, *string.digits, *string.punctuation,
                                *word_pieces(extra_words)]))
    return {tok: i for i, tok in enumerate(specials + [p for p in plain if p not in specials])}


def offline_tokenizer(vocab_size: int, extra_specials: Sequence[str] = (), extra_words: Sequence[str] = ()) -> Any:
    """A `PreTrainedTokenizerFast` whose ids all lie below `vocab_size` (a ConfigError if they cannot).

    `extra_words`: a data set's vocabulary (`VQADataset.vocabulary()`), so that its questions and answers have
    ids of their own instead of `<unk>`; the ids of the default tokens do not change."""
    # the hf extra (transformers and its `tokenizers`): needed only when an LM is built
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = offline_vocabulary(extra_specials, extra_words)
    specials = [t for t in vocab if t in (*SPECIALS, *IMAGE_TOKENS, *extra_specials)]
    if len(vocab) > vocab_size:
        words = f" ({len(vocab) - len(offline_vocabulary(extra_specials))} of them the data set's words)" if extra_words else ""
        raise ConfigError(f"text.vocab_size={vocab_size} is smaller than the offline tokenizer's {len(vocab)} tokens"
                          f"{words}; use text.vocab_size={len(vocab)} or more")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<|im_start|>", eos_token="<end_of_utterance>")
    fast.chat_template = CHAT_TEMPLATE
    fast.model_input_names = ["input_ids", "attention_mask"]
    return fast
