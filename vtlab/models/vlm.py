"""`VisionLanguageModel`: vision stack -> connector -> the causal LM's input embeddings -> logits and tokens.

Mirrors the merge step of transformers' `Idefics3Model.inputs_merger`, `LlavaNextModel` and `LlavaModel`
(v5: `get_placeholder_mask` + `masked_scatter`): the prompt holds one image token per visual token, laid out
by the family (`Family.image_prompt`: Idefics3 / SmolVLM's `<fake_token_around_image>`, `<row_r_col_c>`,
`<global-img>` blocks; LlavaNext's packed anyres tokens; LLaVA's N tokens), the LM's embeddings of those
positions are replaced, in prompt order, by the images' packed tokens (`VisionStack.encode_images`), and the
LM (transformers' own causal LM, vtlab.text.lm) runs on the merged embeddings. It lives in vtlab.models beside
`VisionStack`, the module it wraps; the family rules stay in vtlab.families and the LM in vtlab.text.

`generate` is greedy decoding with the LM's KV cache (one prefill of the merged prompt, then one token per
step), the same tokens as `generate(do_sample=False)` of the transformers VLM; `decode_batch` does the same for
a left-padded batch of prompts (task=eval of a VLM checkpoint). `compile_vision()` compiles the
tower and the connector in place (the LM side keeps its dynamic KV cache eager).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vtlab.errors import ConfigError
from vtlab.models.stack import VisionStack


class VisionLanguageModel(nn.Module):
    """A `VisionStack` whose packed tokens replace the image tokens of a causal LM's prompt embeddings."""

    def __init__(self, stack: VisionStack, lm: nn.Module, tokenizer: Any, family: Any, text: Any) -> None:
        """`lm`: a transformers causal LM as wide as `stack.text_hidden`; `tokenizer`: one that holds the family's
        image tokens; `family`: the vtlab Family (its prompt layout); `text`: the TextConfig (context length)."""
        super().__init__()
        width = lm.get_input_embeddings().weight.shape[1]
        if width != stack.text_hidden:
            raise ConfigError(f"the LM is {width} wide but the connector outputs {stack.text_hidden}; use a text preset "
                              f"with hidden_size={stack.text_hidden} or text_hidden={width}")
        self.stack, self.lm = stack, lm
        self.tokenizer, self.family, self.text = tokenizer, family, text
        self.context = int(text.max_position_embeddings)
        self.image_token_id = self.token_id(family.image_token)
        # the KV-cache argument: `cache` (transformers >= 5.2x) or `past_key_values` (earlier)
        self.cache_arg = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"

    def cache_of(self, out: Any) -> Any:
        return getattr(out, "cache", None) if self.cache_arg == "cache" else out.past_key_values

    # ------------------------------------------------------------------ prompts
    def token_id(self, token: str) -> int:
        ids = self.tokenizer(token, add_special_tokens=False).input_ids
        if len(ids) != 1 or ids[0] == self.tokenizer.unk_token_id:
            where = f" of text.weights={self.text.weights}" if self.text.weights else ""
            raise ConfigError(f"the tokenizer{where} has no single token {token!r}; the {self.family.name} family "
                              f"places images with {', '.join(self.family.untiled_special_tokens())} "
                              f"(add them as special tokens, or drop text.weights for the offline tokenizer)")
        return int(ids[0])

    def check_tokenizer(self, plans: Sequence[Any]) -> None:
        """Every token the family's image layout needs for `plans` is a single id (ConfigError otherwise)."""
        for plan in plans:
            for token in self.family.special_tokens(plan):
                self.token_id(token)

    def prompt_text(self, plans: Sequence[Any], prompt: str) -> str:
        """The images' expansions then `prompt`, through the tokenizer's chat template when it has one."""
        content = "".join(self.family.image_prompt(p) for p in plans) + prompt
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                      add_generation_prompt=True)
        return content

    def prompt_ids(self, plans: Sequence[Any], prompt: str, max_new_tokens: int = 0) -> torch.Tensor:
        """(1, L) ids of the prompt for images of `plans`; refused when it (plus the new tokens) exceeds the context."""
        self.check_tokenizer(plans)
        ids = self.tokenizer(self.prompt_text(plans, prompt), add_special_tokens=False).input_ids
        visual = sum(p.tokens for p in plans)
        if len(ids) + max_new_tokens > self.context:
            raise ConfigError(f"the prompt is {len(ids)} tokens ({visual} visual + {len(ids) - visual} text) + "
                              f"{max_new_tokens} new > the LM's context text.max_position_embeddings={self.context}; "
                              f"use fewer or smaller images, a larger connector.factor or a shorter prompt")
        return torch.tensor([ids], dtype=torch.long)

    # ------------------------------------------------------------------ forward
    def visual_tokens(self, images: Sequence[Any] | None = None, pixel_values: torch.Tensor | None = None,
                      plans: Sequence[Any] | None = None) -> torch.Tensor:
        """(sum of tokens, T): every image's packed tokens in order, from images or from frames + their plans."""
        if images is not None:
            packed = self.stack.encode_images(images)
        else:
            if pixel_values is None or plans is None:
                raise ValueError("give images, or pixel_values (all frames) with the plans of their images")
            packed = self.stack.encode_frames(pixel_values, plans)
        return torch.cat(packed)

    def embed(self, input_ids: torch.Tensor, visual: torch.Tensor | None) -> torch.Tensor:
        """The LM's input embeddings with the image-token positions replaced by `visual`, in order."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        mask = input_ids == self.image_token_id
        count = int(mask.sum())
        have = 0 if visual is None else visual.shape[0]
        if count != have:
            raise ValueError(f"the prompt holds {count} image tokens but the images give {have} visual tokens")
        if visual is None:
            return embeds
        return embeds.masked_scatter(mask[..., None], visual.to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, images: Sequence[Any] | None = None,
                pixel_values: torch.Tensor | None = None, plans: Sequence[Any] | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None, **lm_kwargs: Any) -> Any:
        """The LM's output (`loss` when labels are given, `logits` (B, L, vocab)) for prompts with images."""
        input_ids = input_ids.to(self.lm.device)
        has_images = images is not None or pixel_values is not None
        visual = self.visual_tokens(images, pixel_values, plans) if has_images else None
        embeds = self.embed(input_ids, visual)
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **lm_kwargs)

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, visual: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        """One LM pass over the merged prompt: (logits of the last position (B, vocab), the KV cache)."""
        out = self.lm(inputs_embeds=self.embed(input_ids.to(self.lm.device), visual), use_cache=True,
                      logits_to_keep=1)
        return out.logits[:, -1], self.cache_of(out)

    @torch.no_grad()
    def generate(self, images: Sequence[Any], prompt: str, max_new_tokens: int = 16,
                 stop_at_eos: bool = True) -> list[int]:
        """Greedy decoding with the KV cache: the new token ids (at most `max_new_tokens`)."""
        made = [self.stack.tiler.frames(image) for image in images]
        plans = [plan for _, plan in made]
        ids = self.prompt_ids(plans, prompt, max_new_tokens)
        like = next(self.stack.parameters())
        frames = torch.cat([pixels for pixels, _ in made]).to(device=like.device, dtype=like.dtype)
        return self.decode(ids, self.visual_tokens(pixel_values=frames, plans=plans), max_new_tokens, stop_at_eos)

    @torch.no_grad()
    def decode(self, input_ids: torch.Tensor, visual: torch.Tensor | None, max_new_tokens: int,
               stop_at_eos: bool = True) -> list[int]:
        eos = self.tokenizer.eos_token_id if stop_at_eos else None
        logits, past = self.prefill(input_ids, visual)
        tokens: list[int] = []
        for _ in range(max_new_tokens):
            nxt = logits.argmax(-1)
            tokens.append(int(nxt[0]))
            if eos is not None and tokens[-1] == eos or len(tokens) == max_new_tokens:
                break
            out = self.lm(input_ids=nxt[:, None], use_cache=True, **{self.cache_arg: past})
            logits, past = out.logits[:, -1], self.cache_of(out)
        return tokens

    @torch.no_grad()
    def decode_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, visual: torch.Tensor | None,
                     max_new_tokens: int, stop_at_eos: bool = True) -> list[list[int]]:
        """Greedy decoding of a LEFT-padded batch of prompts (attention_mask 0 on the padding) with the KV cache:
        each row's new ids, up to and including its first eos. Positions count real tokens only (as in
        transformers' `generate` with left padding), so a row decodes the tokens `decode` gives it alone."""
        device = self.lm.device
        ids, mask = input_ids.to(device), attention_mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.lm(inputs_embeds=self.embed(ids, visual), attention_mask=mask, position_ids=pos, use_cache=True,
                      logits_to_keep=1)
        logits, past = out.logits[:, -1], self.cache_of(out)
        eos = self.tokenizer.eos_token_id if stop_at_eos else None
        rows: list[list[int]] = [[] for _ in range(ids.shape[0])]
        done = [False] * ids.shape[0]
        nxt_pos = pos[:, -1:]
        for step in range(max_new_tokens):
            nxt = logits.argmax(-1)
            for i, token in enumerate(nxt.tolist()):
                if not done[i]:
                    rows[i].append(token)
                    done[i] = token == eos
            if all(done) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            nxt_pos = nxt_pos + 1
            out = self.lm(input_ids=nxt[:, None], attention_mask=mask, position_ids=nxt_pos, use_cache=True,
                          **{self.cache_arg: past})
            logits, past = out.logits[:, -1], self.cache_of(out)
        return rows

    def compile_vision(self, **kwargs: Any) -> VisionLanguageModel:
        """torch.compile the tower and the connector in place (the packing and the LM stay eager)."""
        self.stack.tower.compile(**kwargs)
        self.stack.connector.compile(**kwargs)
        return self
