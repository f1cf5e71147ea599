"""Turn (prompt, target) examples into padded tensors for any Hugging Face tokenizer.

A sequence is ``[bos] prompt target [eos]`` (``bos`` only when the tokenizer has one). Loss, token
accuracy and exact match are computed on the target tokens and the closing ``eos`` only; the prompt is
context. The target is tokenised as ``" " + target`` after the prompt so that BPE tokenizers with a
leading-space convention (GPT-2, Llama) see the same tokens as in running text.

Because the model is scored teacher-forced, "every target token is the argmax" is exactly the
condition under which greedy decoding reproduces the target, so exact match needs one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from forgetting.tasks.families import Example

IGNORE_INDEX = -100


@dataclass
class EncodedExamples:
    """Padded batch tensors, all of shape (n, L) (right padding).

    - ``labels``: aligned with ``input_ids`` as in Hugging Face (the model shifts by one internally);
      ``IGNORE_INDEX`` outside the target and ``eos``.
    - ``answer_mask``: True on the target tokens (not ``eos``): the positions of "answer match".
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    answer_mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, index: torch.Tensor | slice) -> "EncodedExamples":
        """Rows ``index``, trimmed to the longest remaining sequence."""
        rows = EncodedExamples(
            self.input_ids[index], self.attention_mask[index], self.labels[index], self.answer_mask[index]
        )
        width = int(rows.attention_mask.sum(dim=1).max())
        return EncodedExamples(
            rows.input_ids[:, :width], rows.attention_mask[:, :width], rows.labels[:, :width],
            rows.answer_mask[:, :width],
        )

    def as_model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "labels": self.labels}


def concat_examples(parts: Sequence[EncodedExamples]) -> EncodedExamples:
    """Stack several encoded sets into one, right-padding to the widest (shapes (sum n_i, max L_i)).

    Padding positions are masked (attention 0, label ``IGNORE_INDEX``), so the id they carry does not
    matter; 0 is used.
    """
    width = max(p.input_ids.shape[1] for p in parts)

    def pad(x: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    return EncodedExamples(
        torch.cat([pad(p.input_ids, 0) for p in parts]),
        torch.cat([pad(p.attention_mask, 0) for p in parts]),
        torch.cat([pad(p.labels, IGNORE_INDEX) for p in parts]),
        torch.cat([pad(p.answer_mask, False) for p in parts]),
    )


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def example_length(tokenizer, example: Example) -> int:
    """The number of tokens ``example`` encodes to: ``[bos] prompt " "+target eos`` (as :func:`encode_examples`)."""
    bos = 1 if tokenizer.bos_token_id is not None else 0
    return bos + len(_ids(tokenizer, example.prompt)) + len(_ids(tokenizer, " " + example.target)) + 1


def encode_examples(tokenizer, examples: Sequence[Example], max_length: int | None = None) -> EncodedExamples:
    """Encode ``examples`` with ``tokenizer``; raises ``ValueError`` if one exceeds ``max_length``."""
    if not examples:
        raise ValueError("examples: need at least one example")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None or tokenizer.eos_token_id is None:
        raise ValueError("tokenizer: needs an eos token (and a pad token, or eos is used)")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    rows: list[tuple[list[int], int, int]] = []  # ids, target start, target end (exclusive, before eos)
    for ex in examples:
        prompt = bos + _ids(tokenizer, ex.prompt)
        target = _ids(tokenizer, " " + ex.target)
        ids = prompt + target + [tokenizer.eos_token_id]
        if max_length is not None and len(ids) > max_length:
            raise ValueError(f"example {ex.prompt!r}: {len(ids)} tokens exceed max_length={max_length}")
        rows.append((ids, len(prompt), len(prompt) + len(target)))
    width = max(len(ids) for ids, _, _ in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    answer_mask = torch.zeros((n, width), dtype=torch.bool)
    for i, (ids, start, end) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        labels[i, start : len(ids)] = torch.tensor(ids[start:])
        answer_mask[i, start:end] = True
    return EncodedExamples(input_ids, attention_mask, labels, answer_mask)


def answer_token_ids(tokenizer, answer_vocab: Sequence[str]) -> torch.Tensor:
    """Token ids of the words a task's targets are made of (each word's tokens, deduplicated)."""
    ids: set[int] = set()
    for word in answer_vocab:
        ids.update(_ids(tokenizer, " " + word))
    return torch.tensor(sorted(ids), dtype=torch.long)
