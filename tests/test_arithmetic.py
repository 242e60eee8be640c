"""The compiled training step's arithmetic bookkeeping (engine/arithmetic.py): compiled code made
under one precision is discarded before a training under another compiles, and a training's TF32
switches do not outlive it."""

import pytest
import torch

from prefalign.engine import arithmetic


@pytest.fixture
def fresh_process(monkeypatch):
    """No compiled code recorded yet, torch.compile's reset counted instead of run, switches restored after."""
    resets = []
    monkeypatch.setattr(arithmetic, "_compiled_under", None)
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    with arithmetic.fp32_switches_restored():
        yield resets


def test_compiled_code_is_discarded_only_when_the_arithmetic_changes(fresh_process):
    resets, notes = fresh_process, []
    torch.backends.fp32_precision = "ieee"
    assert not arithmetic.forget_compiled_code_made_under_other_arithmetic(None, notes.append)  # nothing compiled yet
    assert not arithmetic.forget_compiled_code_made_under_other_arithmetic(None, notes.append)  # same arithmetic
    assert resets == []
    torch.backends.fp32_precision = "tf32"  # what HF's TrainingArguments(tf32=True) sets
    assert arithmetic.forget_compiled_code_made_under_other_arithmetic(None, notes.append)
    assert resets == [1]
    assert not arithmetic.forget_compiled_code_made_under_other_arithmetic(None, notes.append)
    assert arithmetic.forget_compiled_code_made_under_other_arithmetic(torch.bfloat16, notes.append)  # autocast on
    assert resets == [1, 1] and len(notes) == 2


def test_the_arithmetic_in_force_tells_tf32_from_ieee_fp32(fresh_process):
    torch.backends.fp32_precision = "ieee"
    ieee = arithmetic.arithmetic_in_force(None)
    torch.backends.fp32_precision = "tf32"
    assert arithmetic.arithmetic_in_force(None) != ieee
    torch.backends.fp32_precision = "ieee"
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # only the matmuls
    assert arithmetic.arithmetic_in_force(None) != ieee
    assert arithmetic.arithmetic_in_force(torch.bfloat16) != arithmetic.arithmetic_in_force(None)


def test_the_switches_come_back_after_a_training_sets_them():
    before = arithmetic.arithmetic_in_force(None)
    with arithmetic.fp32_switches_restored():
        torch.backends.fp32_precision = "tf32"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        assert arithmetic.arithmetic_in_force(None) != before
    assert arithmetic.arithmetic_in_force(None) == before
    with pytest.raises(KeyError), arithmetic.fp32_switches_restored():
        torch.backends.fp32_precision = "tf32"
        raise KeyError("a failed training")
    assert arithmetic.arithmetic_in_force(None) == before
