"""Notes on how the records were made: provenance changes within a seed and across a comparison, skipped layers."""

from dataclasses import replace

from src.report import build_report
from src.report.notes import provenance_notes
from src.report.records import load_experiment
from tests.report_helpers import provenance, simple, write_result


def test_iterations_made_under_other_provenance_are_noted(tmp_path):
    cka, l1 = tmp_path / "study" / "cka", tmp_path / "study" / "l1"
    two, one = provenance(threads=2), provenance(threads=1)
    write_result(cka, "study/cka", "cka", 0, 0.9, [simple(1, 0.8, 0.85, made=two), simple(2, 0.7, 0.8, made=two),
                                                     simple(3, 0.6, 0.7, made=one)], planned=3)
    write_result(cka, "study/cka", "cka", 1, 0.9, [simple(i, 0.8, 0.8, made=one) for i in (1, 2, 3)], planned=3)
    write_result(l1, "study/l1", "l1", 0, 0.9, [simple(i, 0.8, 0.8, made=provenance(torch="2.12.0")) for i in (1, 2, 3)],
                 planned=3)
    write_result(l1, "study/l1", "l1", 1, 0.9, [simple(i, 0.8, 0.8) for i in (1, 2, 3)], planned=3)  # schema 2: none
    report = build_report([cka, l1], config_root=None)
    notes = "\n".join(report.notes)
    assert "seed 0 of study/cka: made under different conditions: iterations 1-2 threads 2; iteration 3 threads 1" in notes
    assert "seed 1 of study/cka" not in notes
    versions = next(n for n in report.notes if n.startswith("the compared results were made with different code"))
    assert "cpu_capability" not in versions  # no record names its kernels: nothing differs there
    assert "torch 2.13.0 (cka seed(s) 0, 1)" in versions and "torch 2.12.0 (l1 seed(s) 0)" in versions
    assert "provenance not recorded (l1 seed(s) 1)" in versions
    same = load_experiment(cka)
    assert provenance_notes([same]) == [n for n in report.notes if "study/cka" in n]  # one code version: one note


def test_seeds_trained_with_other_cpu_kernels_are_noted(tmp_path):
    """The same code on another CPU's kernels trains other models (docs/reproducibility.md)."""
    native, portable = tmp_path / "native", tmp_path / "portable"
    for folder, made in ((native, replace(provenance(), cpu_capability="AVX512")),
                         (portable, replace(provenance(), cpu_capability="DEFAULT",
                                            kernel_settings="ATEN_CPU_CAPABILITY=default"))):
        write_result(folder, folder.name, "cka", 0, 0.9, [simple(i, 0.8, 0.8, made=made) for i in (1, 2)], planned=2)
    notes = provenance_notes([load_experiment(native), load_experiment(portable)])
    assert len(notes) == 1 and "CPU kernels" in notes[0]
    assert "cpu_capability AVX512" in notes[0] and "cpu_capability DEFAULT" in notes[0]


def test_skipped_layers_are_named(tmp_path):
    run = tmp_path / "tp"
    reason = "outputs do not vary by channel index"
    write_result(run, "tp", "tp_l1", 0, 0.9, [simple(1, 0.8, 0.85, skipped={1: reason}),
                                              simple(2, 0.7, 0.8, skipped={1: reason})])
    write_result(run, "tp", "tp_l1", 1, 0.9, [simple(1, 0.8, 0.85, skipped={1: reason}), simple(2, 0.7, 0.8)])
    notes = build_report([run], config_root=None).experiments[0].notes
    assert f"layer L1 was skipped (nothing removed) in iteration(s) 1-2 of seed(s) 0, 1: {reason}" in notes
