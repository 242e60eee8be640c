"""The numpy collator gives TRL's preference batches, tensor for tensor."""

import random

import pytest
import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference

from prefalign.engine.preference_batches import NumpyPreferenceCollator, numpy_collator


def examples(rng: random.Random, n: int, with_ref: bool) -> list[dict]:
    def ids(low, high):
        return [rng.randrange(1, 500) for _ in range(rng.randint(low, high))]

    out = [{"prompt_ids": ids(1, 6), "chosen_ids": ids(0, 30), "rejected_ids": ids(1, 30)} for _ in range(n)]
    if with_ref:
        for e in out:
            e["ref_chosen_logps"], e["ref_rejected_logps"] = rng.uniform(-90, -1), rng.uniform(-90, -1)
    return out


@pytest.mark.parametrize("max_length", [None, 12, 40])
@pytest.mark.parametrize("truncation_mode", ["keep_start", "keep_end"])
@pytest.mark.parametrize("pad_to_multiple_of", [None, 8, 64])
def test_numpy_batches_equal_trls(max_length, truncation_mode, pad_to_multiple_of):
    settings = dict(
        pad_token_id=7, max_length=max_length, truncation_mode=truncation_mode, pad_to_multiple_of=pad_to_multiple_of
    )
    trl, ours = DataCollatorForPreference(**settings), NumpyPreferenceCollator(**settings)
    rng = random.Random(f"{max_length}-{truncation_mode}-{pad_to_multiple_of}")
    for trial in range(20):
        batch = examples(rng, rng.randint(1, 9), with_ref=trial % 2 == 0)
        expected, got = trl(batch), ours(batch)
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key].dtype == expected[key].dtype, key
            assert torch.equal(got[key], expected[key]), key


def test_only_trls_own_text_collator_is_replaced():
    trl = DataCollatorForPreference(pad_token_id=3, max_length=20, pad_to_multiple_of=4)
    ours = numpy_collator(trl)
    assert type(ours) is NumpyPreferenceCollator and (ours.pad_token_id, ours.max_length, ours.pad_to_multiple_of) == (
        3,
        20,
        4,
    )

    def custom(batch):
        return batch

    assert numpy_collator(custom) is custom
