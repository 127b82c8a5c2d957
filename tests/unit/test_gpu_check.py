"""bench/gpu_check.py's logic, in its CPU smoke mode on tiny widths (issue 16.4): the device
check that needs a GPU to mean anything must at least run end to end where CI runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _gpu_check():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling realshape.py
    try:
        spec = importlib.util.spec_from_file_location("gpu_check", BENCH / "gpu_check.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_cpu_smoke_mode_reports_parity_and_throughput(tmp_path) -> None:
    out = tmp_path / "report.json"
    report = _gpu_check().main(["--device", "cpu", "--layers", "1", "--small", "--steps", "3",
                                "--parity-steps", "4", "--no-reference", "--json", str(out)])
    assert out.is_file()
    parity = report["parity"]
    assert 0 < parity["logits_rel_err"] < 0.05  # bf16 differs from fp32, but not by much
    assert 0.0 <= parity["teacher_forced_agreement"] <= 1.0
    assert report["lalm_bf16"]["decode_tok_s"] > 0 and "transformers_bf16" not in report


@pytest.mark.slow  # imports transformers and builds its model: ~60 s on the shared CPU
def test_cpu_smoke_mode_with_the_transformers_reference() -> None:
    pytest.importorskip("transformers")
    report = _gpu_check().main(["--device", "cpu", "--layers", "1", "--small", "--steps", "4",
                                "--parity-steps", "4"])
    # transformers holds lalm's bf16 tensors: its greedy tokens are lalm's
    assert report["transformers_bf16"]["same_greedy_prefix_as_lalm_bf16"] == "4/4"
    assert set(report["ratio_lalm_over_transformers"]) == {"encoder_speed", "prefill_speed",
                                                           "decode_speed"}
