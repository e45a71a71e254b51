"""Recording the scoring samples: any forward pass (tensors, tuples, dicts, BatchEncoding, a
user's loop), padding tokens excluded, and a seeded reservoir whose size is set by max_samples."""

import pytest
import torch
from torch import nn
from transformers import BatchEncoding

from cka_prune import CKAImportance
from cka_prune.tp.recording import Reservoir


def test_the_reservoir_keeps_the_cap_smallest_keys_of_all_batches_in_arrival_order():
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 3, generator=generator) for n in (7, 1, 12, 5, 9)]
    keys = [torch.rand(len(b), generator=generator) for b in batches]
    reservoir = Reservoir(cap=6)
    for rows, k in zip(batches, keys):
        reservoir.add(rows, k)
        assert len(reservoir.rows) <= 6  # never more than max_samples between batches
    every_row, every_key = torch.cat(batches), torch.cat(keys)
    smallest = sorted(sorted(range(len(every_key)), key=lambda i: float(every_key[i]))[:6])
    assert torch.equal(reservoir.rows, every_row[smallest])
    assert reservoir.seen == len(every_row)


def test_without_a_cap_the_reservoir_keeps_every_row():
    reservoir = Reservoir(cap=None)
    rows = torch.randn(10, 2)
    reservoir.add(rows[:4], torch.rand(4))
    reservoir.add(rows[4:], torch.rand(6))
    assert torch.equal(reservoir.rows, rows)


class Tokens(nn.Module):
    """Embeds token ids, then two Linear layers on the tokens; keyword and positional calls alike."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 4)
        self.a, self.b, self.head = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 2)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.b(torch.relu(self.a(self.embed(input_ids))))).mean(1)


def recorded(importance, model, layer):
    return importance.outputs[layer]


def test_tensors_tuples_dicts_and_batch_encodings_record_the_same_samples():
    torch.manual_seed(0)
    model, ids = Tokens(), torch.randint(0, 20, (8, 5))
    results = []
    for inputs in (ids, (ids,), {"input_ids": ids}, BatchEncoding({"input_ids": ids})):
        importance = CKAImportance(max_samples=16)
        importance.record(model, inputs, batch_size=3)
        results.append(recorded(importance, model, model.a))
    for y in results[1:]:
        assert torch.equal(y, results[0])
    assert results[0].shape == (16, 6, 1)


def test_a_users_loop_inside_recording_equals_record():
    torch.manual_seed(0)
    model, ids = Tokens(), torch.randint(0, 20, (9, 5))
    by_record, by_loop = CKAImportance(max_samples=20), CKAImportance(max_samples=20)
    by_record.record(model, {"input_ids": ids}, batch_size=4)
    with by_loop.recording(model):
        for start in range(0, 9, 4):
            model(input_ids=ids[start:start + 4])
    assert torch.equal(recorded(by_loop, model, model.b), recorded(by_record, model, model.b))


def test_padding_tokens_are_not_samples():
    torch.manual_seed(0)
    model, ids = Tokens(), torch.randint(0, 20, (4, 6))
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0], [1] * 2 + [0] * 4])
    importance = CKAImportance(max_samples=None)
    importance.record(model, {"input_ids": ids, "attention_mask": mask}, batch_size=2)
    with torch.no_grad():
        expected = model.a(model.embed(ids))[mask.bool()]  # the real tokens, in order
    torch.testing.assert_close(recorded(importance, model, model.a)[:, :, 0], expected)
    # A mask given by the user (here: only the first token of each sequence), and none at all.
    first = torch.zeros(4, 6, dtype=torch.bool)
    first[:, 0] = True
    importance.record(model, {"input_ids": ids}, mask_from=lambda args, kwargs: first[:len(kwargs["input_ids"])])
    assert recorded(importance, model, model.a).shape[0] == 4
    importance.record(model, {"input_ids": ids, "attention_mask": mask}, mask_from=None)
    assert recorded(importance, model, model.a).shape[0] == 24


def test_every_layer_with_the_same_rows_keeps_the_same_rows():
    torch.manual_seed(0)
    model, ids = Tokens(), torch.randint(0, 20, (40, 5))
    importance = CKAImportance(max_samples=32)
    importance.record(model, ids, batch_size=7)
    a, b = recorded(importance, model, model.a)[:, :, 0], recorded(importance, model, model.b)[:, :, 0]
    assert len(a) == len(b) == 32
    with torch.no_grad():
        torch.testing.assert_close(b, model.b(torch.relu(a)))  # b's rows are a's rows, one for one


def test_recording_restores_the_mode_and_gradients_even_when_the_loop_fails():
    model = Tokens().train()
    importance = CKAImportance()
    with pytest.raises(RuntimeError, match="stop"):
        with importance.recording(model):
            assert not model.training and not torch.is_grad_enabled()
            raise RuntimeError("stop")
    assert model.training and torch.is_grad_enabled()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_unknown_inputs_are_one_line():
    with pytest.raises(TypeError, match="inputs must be a tensor, a tuple of tensors or a dict"):
        CKAImportance().record(Tokens(), "a sentence")
