"""The two heads: shapes, parameter counts, and a clear message without PennyLane."""

from __future__ import annotations

import sys

import pytest
import torch

from cloud.heads.models import (
    QuantumUnavailable,
    classical_head,
    expected_quantum_parameters,
    make_head,
    quantum_head,
    trainable_parameters,
)


def test_the_classical_head_is_the_reports_mlp() -> None:
    head = classical_head(1024, 8, hidden=256)
    # The report's own figure: 1024 features, 8 labels, 264,456 parameters.
    assert trainable_parameters(head) == 264_456
    assert head(torch.zeros(3, 1024)).shape == (3, 8)


def test_the_quantum_head_has_the_expected_parameters_and_output() -> None:
    head = quantum_head(1024, 8, layers=2)
    # The report's own figure: 4,164 parameters for 1024 features and 8 labels.
    assert trainable_parameters(head) == expected_quantum_parameters(1024, 8, 2) == 4_164
    out = head(torch.randn(5, 1024))
    assert out.shape == (5, 8) and torch.isfinite(out).all()
    out.sum().backward()  # trained end to end: gradients reach the circuit's weights
    circuit_weights = [p for name, p in head.named_parameters() if "weights" in name]
    assert circuit_weights and circuit_weights[0].grad is not None


def test_make_head_builds_either_variant_with_the_shared_settings() -> None:
    assert trainable_parameters(make_head("classical", 128, 9, hidden=64, layers=2)) == (
        128 * 64 + 64 + 64 * 9 + 9
    )
    assert trainable_parameters(make_head("quantum", 128, 9, hidden=64, layers=3)) == (
        expected_quantum_parameters(128, 9, 3)
    )


def test_without_pennylane_the_quantum_head_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pennylane", None)  # import raises ImportError
    with pytest.raises(QuantumUnavailable, match=r"\.\[quantum\]"):
        quantum_head(16, 9)
