"""The two heads the benchmark compares, both ending in logits over the classes.

- **classical**: ``Linear -> ReLU -> Dropout -> Linear`` (the report's MLP head).
- **quantum**: ``Linear`` to 4 angles, PennyLane ``AngleEmbedding`` over 4 qubits,
  ``StronglyEntanglingLayers``, the 4 Pauli-Z expectation values, ``Linear`` to the classes,
  trained end to end as a ``TorchLayer`` on the ``default.qubit`` simulator (CPU).

PennyLane is the optional extra ``[quantum]``; asking for the quantum head without it raises
`QuantumUnavailable` saying what to install.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Variant = Literal["classical", "quantum"]
VARIANTS: tuple[Variant, ...] = ("classical", "quantum")
N_QUBITS = 4
INSTALL_HINT = "pip install -c constraints.txt -e '.[quantum]'  (PennyLane, CPU simulator)"


class QuantumUnavailable(RuntimeError):  # noqa: N818 (what the user reads)
    """PennyLane is not installed."""


def classical_head(dim: int, classes: int, *, hidden: int = 256, dropout: float = 0.2) -> nn.Module:
    """The MLP head: ``dim -> hidden -> classes``."""
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes)
    )


def quantum_head(dim: int, classes: int, *, layers: int = 2) -> nn.Module:
    """The hybrid head: ``dim -> 4 angles -> 4-qubit circuit -> 4 expectations -> classes``.

    Raises:
        QuantumUnavailable: PennyLane is not installed.
    """
    try:
        import pennylane as qml
    except ImportError:
        raise QuantumUnavailable(f"the quantum head needs PennyLane: {INSTALL_HINT}") from None
    device = qml.device("default.qubit", wires=N_QUBITS)

    @qml.qnode(device, interface="torch", diff_method="backprop")  # type: ignore[misc]
    def circuit(inputs: torch.Tensor, weights: torch.Tensor) -> list[torch.Tensor]:
        qml.AngleEmbedding(inputs, wires=range(N_QUBITS))
        qml.StronglyEntanglingLayers(weights, wires=range(N_QUBITS))
        return [qml.expval(qml.PauliZ(wire)) for wire in range(N_QUBITS)]

    circuit_layer = qml.qnn.TorchLayer(circuit, {"weights": (layers, N_QUBITS, 3)})
    return nn.Sequential(nn.Linear(dim, N_QUBITS), circuit_layer, nn.Linear(N_QUBITS, classes))


def make_head(variant: Variant, dim: int, classes: int, *, hidden: int, layers: int) -> nn.Module:
    """The head of ``variant`` for ``dim`` features and ``classes`` classes."""
    if variant == "classical":
        return classical_head(dim, classes, hidden=hidden)
    return quantum_head(dim, classes, layers=layers)


def trainable_parameters(module: nn.Module) -> int:
    """Parameters that training updates."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def expected_quantum_parameters(dim: int, classes: int, layers: int) -> int:
    """The quantum head's parameter count: the angle projection, the circuit, the readout."""
    return dim * N_QUBITS + N_QUBITS + layers * N_QUBITS * 3 + N_QUBITS * classes + classes
