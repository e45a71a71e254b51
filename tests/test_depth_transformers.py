"""Depth pruning of Hugging Face decoders (tiny random Llama and GPT-2): the layers are found, a layer
removed equals the dense model with that layer's output replaced by its input, and generate() runs."""

import pytest
import torch
import transformers

from cka_prune import depth


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=None, eos_token_id=None))


def _gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=32, n_embd=16, n_layer=3, n_head=2, n_positions=64, bos_token_id=None, eos_token_id=None))


CASES = [(_llama, "model.layers"), (_gpt2, "transformer.h")]


def _batches():
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(2):
        ids = torch.randint(0, 32, (3, 7), generator=g)
        mask = torch.ones_like(ids)
        mask[0, :2] = 0  # left padding on the first sequence
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@pytest.mark.parametrize("build, stack", CASES)
def test_the_layers_are_found_and_a_removed_layer_is_skipped(build, stack):
    torch.manual_seed(0)
    model = build().eval()
    batches = _batches()
    names = depth.find_blocks(model)
    assert names == [f"{stack}.{i}" for i in range(3)] == depth.find_blocks(model, batches[0])
    plan = depth.select(model, names, batches, "cosine", 1, compensate="none",
                        mask=lambda b: b["attention_mask"].bool())
    pruned = depth.apply(model, plan)
    (name,) = plan.removed
    hook = model.get_submodule(name).register_forward_hook(
        lambda m, args, kwargs, out: args[0] if args else kwargs["hidden_states"], with_kwargs=True)
    with torch.no_grad():
        skipped = model(**batches[0]).logits
    hook.remove()
    with torch.no_grad():
        torch.testing.assert_close(pruned(**batches[0]).logits, skipped, rtol=0, atol=1e-6)
    removed = sum(p.numel() for p in model.get_submodule(name).parameters())
    assert sum(p.numel() for p in pruned.parameters()) == sum(p.numel() for p in model.parameters()) - removed


@pytest.mark.parametrize("build, stack", CASES)
@pytest.mark.parametrize("first", [0, 1])
def test_generate_runs_on_the_patched_model_and_equals_decoding_without_a_cache(build, stack, first):
    torch.manual_seed(0)
    model = build().eval()
    names = depth.find_blocks(model)
    plan = depth.select(model, names[first:first + 1], _batches(), "residual", 1, compensate="lstsq")
    pruned = depth.apply(model, plan)
    prompt = _batches()[0]["input_ids"][1:, :4]
    out = pruned.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False,
                          pad_token_id=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(5):
            seq = torch.cat([seq, pruned(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)
