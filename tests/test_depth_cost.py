"""cka_prune.depth.cost: a removed block's MACs and parameters leave the count, a patch's enter it;
latency is reported per batch size (its values are not asserted)."""

import torch

from cka_prune import depth
from tests.depth_helpers import ResidualMLP


def test_the_count_drops_by_the_blocks_removed_and_rises_by_the_patch():
    torch.manual_seed(0)
    model = ResidualMLP(width=8).eval()  # a block: LayerNorm(8), Linear(8, 16), Linear(16, 8)
    batches = [torch.randn(16, 6) for _ in range(2)]
    x = batches[0]
    dense = depth.cost(model, x)
    assert dense.params == sum(p.numel() for p in model.parameters())
    plain = depth.cost(depth.apply(model, depth.select(model, ["blocks.1"], batches, "tail", 1, compensate="none")), x)
    patched = depth.cost(depth.apply(model, depth.select(model, ["blocks.1"], batches, "tail", 1)), x)
    block_params = 2 * 8 + (8 * 16 + 16) + (16 * 8 + 8)
    assert dense.params - plain.params == block_params
    assert patched.params - plain.params == 8 * 8 + 8
    assert dense.macs - plain.macs >= 8 * 16 + 16 * 8  # per sample; the counter adds the norm's own count
    assert patched.macs - plain.macs == 8 * 8


def test_latency_has_one_median_per_batch_size():
    model = ResidualMLP()  # in training mode: timed in eval mode, its mode given back
    timings = depth.latency(model, torch.randn(3, 6), batch_sizes=(1, 4), min_run_time=0.01)
    assert list(timings) == [1, 4] and all(isinstance(t, float) and t > 0 for t in timings.values())
    assert model.training and all(m.training for m in model.modules())


def test_an_exported_program_is_timed_as_it_was_traced():
    # ExportedProgram.module() refuses eval() and train(): its mode was fixed when it was exported
    model = ResidualMLP().eval()
    program = torch.export.export(model, (torch.randn(2, 6),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    timings = depth.latency(program.module(), torch.randn(3, 6), batch_sizes=(1, 4), min_run_time=0.01)
    assert list(timings) == [1, 4] and all(isinstance(t, float) and t > 0 for t in timings.values())
