import torch
import torch.nn.functional as F  # noqa: N812

from cloud.training.losses import deep_supervision_loss


def test_loss_is_mean_over_steps_of_ce_plus_weighted_halting_bce() -> None:
    torch.manual_seed(0)
    logits = [torch.randn(8, 9, requires_grad=True) for _ in range(3)]
    halts = [torch.randn(8, requires_grad=True) for _ in range(3)]
    targets = torch.randint(0, 9, (8,))
    parts = deep_supervision_loss(logits, halts, targets, halt_lambda=0.5)
    expected = (
        sum(
            F.cross_entropy(lg, targets)
            + 0.5 * F.binary_cross_entropy_with_logits(h, (lg.argmax(-1) == targets).float())
            for lg, h in zip(logits, halts, strict=True)
        )
        / 3
    )
    assert torch.allclose(parts.total, expected)
    parts.total.backward()
    assert all(lg.grad is not None for lg in logits)


def test_halting_target_is_whether_the_step_is_right() -> None:
    targets = torch.tensor([0, 1])
    right = torch.tensor([[5.0, 0.0] + [0.0] * 7, [0.0, 5.0] + [0.0] * 7])
    confident = [torch.tensor([9.0, 9.0])]
    doubtful = [torch.tensor([-9.0, -9.0])]
    assert deep_supervision_loss([right], confident, targets).halt < 0.01
    assert deep_supervision_loss([right], doubtful, targets).halt > 8
    assert deep_supervision_loss([right], None, targets).step_accuracy == [1.0]


def test_logit_adjustment_shifts_training_logits_only() -> None:
    targets = torch.tensor([1])
    logits = [torch.zeros(1, 9)]
    bias = torch.zeros(9)
    bias[1] = 2.0  # a frequent class: its logit is helped in training
    plain = deep_supervision_loss(logits, None, targets)
    adjusted = deep_supervision_loss(logits, None, targets, logit_bias=bias)
    assert adjusted.ce < plain.ce
