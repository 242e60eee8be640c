"""Preference batches collated with numpy: TRL's DataCollatorForPreference, the same tensors, less host time.

TRL 1.16's collator builds one tensor per sequence and pads them with `torch` calls: about 350
small CPU operations for a batch of 8 pairs (torch.profiler, the tiny policy), which on a GPU is host
time the training step waits for. Here every key is filled into one numpy array and handed to torch
once. Output: `input_ids`, `attention_mask`, `completion_mask` (2*batch, width), chosen rows first,
each the prompt + completion truncated to `max_length` (`truncation_mode`) and right-padded to the
longest row, rounded up to `pad_to_multiple_of`; plus `ref_chosen_logps` / `ref_rejected_logps`
(batch,) when the examples have them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from prefalign.engine.trl_compat import preference_collator_class

# TRL's text collator, reached through trl_compat (a TRL module path, not its public API).
DataCollatorForPreference = preference_collator_class()


@dataclasses.dataclass
class NumpyPreferenceCollator(DataCollatorForPreference):
    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if self.truncation_mode not in ("keep_start", "keep_end"):
            return super().torch_call(examples)  # TRL raises its own error for it
        rows = [(e["prompt_ids"], e[key]) for key in ("chosen_ids", "rejected_ids") for e in examples]
        sequences, completions = [], []
        for prompt, completion in rows:
            ids, is_completion = list(prompt) + list(completion), [0] * len(prompt) + [1] * len(completion)
            if self.max_length is not None and len(ids) > self.max_length:
                cut = (
                    slice(None, self.max_length)
                    if self.truncation_mode == "keep_start"
                    else slice(-self.max_length, None)
                )
                ids, is_completion = ids[cut], is_completion[cut]
            sequences.append(ids)
            completions.append(is_completion)
        width = max(len(ids) for ids in sequences)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        completion_mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, (ids, is_completion) in enumerate(zip(sequences, completions)):
            input_ids[i, : len(ids)] = ids
            attention_mask[i, : len(ids)] = 1
            completion_mask[i, : len(ids)] = is_completion
        output = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "completion_mask": torch.from_numpy(completion_mask),
        }
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in examples[0]:
                output[key] = torch.tensor([e[key] for e in examples])
        return output


def numpy_collator(collator):
    """`collator` as a NumpyPreferenceCollator with the same settings when it is TRL's own text
    collator; any other collator (vision, a user's) is returned as it is."""
    if type(collator) is not DataCollatorForPreference:
        return collator
    return NumpyPreferenceCollator(**{f.name: getattr(collator, f.name) for f in dataclasses.fields(collator)})
