import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cloud.models.trm import (
    Rotary2D,
    TinyRecursiveModel,
    TRMConfig,
    count_parameters,
    flops_per_step,
)

SMALL = TRMConfig(dim=16, heads=2, patch=2, n=2, T=2, n_sup=3)


def tokens(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 3, (batch, 676), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("patch", [1, 2, 4])
def test_patching_sets_sequence_length(patch: int) -> None:
    config = TRMConfig(dim=16, heads=2, patch=patch)
    side = -(-26 // patch)
    assert config.tokens == side * side + 1
    out = TinyRecursiveModel(config)(tokens(), n_sup=1)
    assert out[0].y.shape == (3, config.tokens, 16)


@pytest.mark.parametrize("mixer", ["attention", "mlp"])
def test_forward_gives_one_output_per_supervision_step(mixer: str) -> None:
    model = TinyRecursiveModel(TRMConfig(dim=16, heads=2, patch=2, mixer=mixer, n_sup=3))
    outs = model(tokens(4))
    assert len(outs) == 3
    for out in outs:
        assert out.logits.shape == (4, 9)
        assert out.halt_logit.shape == (4,)
        assert not out.y.requires_grad or out.y.grad_fn is not None


def test_state_is_detached_between_steps_and_only_last_cycle_has_gradient() -> None:
    model = TinyRecursiveModel(SMALL)
    outs = model(tokens())
    # Gradient from step 2's loss reaches the weights but not step 1's state.
    outs[1].logits.sum().backward()
    assert model.head.weight.grad is not None
    assert _graph_size(outs[1].logits) == _graph_size(outs[0].logits), (
        "step 2 must not reach step 1"
    )
    # Counting autograd nodes: T=2 cycles but only the last one is recorded.
    recorded = TinyRecursiveModel(TRMConfig(dim=16, heads=2, patch=2, n=2, T=1, n_sup=1))
    recorded.load_state_dict(model.state_dict())
    a = _graph_size(model(tokens(), n_sup=1)[0].logits)
    b = _graph_size(recorded(tokens(), n_sup=1)[0].logits)
    assert a == b, "the T-1 warm-up cycles must run without gradient"


def _graph_size(t: torch.Tensor) -> int:
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return len(seen)


def test_recursion_changes_the_answer_across_steps() -> None:
    torch.manual_seed(0)
    outs = TinyRecursiveModel(SMALL)(tokens())
    assert not torch.allclose(outs[0].logits, outs[-1].logits)


def test_rotary_preserves_norms_and_leaves_class_token_alone() -> None:
    rope = Rotary2D(head_dim=8, side=13, base=100.0)
    x = torch.randn(2, 2, 170, 8)
    y = rope(x)
    assert torch.allclose(x.norm(dim=-1), y.norm(dim=-1), atol=1e-5)
    assert torch.equal(x[:, :, 0], y[:, :, 0])
    # Relative: the score between two positions depends only on their offset.
    q, k = torch.randn(8), torch.randn(8)
    placed = torch.zeros(1, 1, 170, 8)
    # Token 1 + 13*r + c sits at patch (r, c): pairs (0,0)-(0,1) and (5,3)-(5,4) share an offset.
    placed[0, 0, [1, 1 + 13 * 5 + 3]] = q
    placed[0, 0, [2, 1 + 13 * 5 + 4]] = k
    r = rope(placed)[0, 0]
    assert torch.allclose(r[1] @ r[2], r[1 + 13 * 5 + 3] @ r[1 + 13 * 5 + 4], atol=1e-5)
    assert not torch.allclose(r[1] @ r[2], q @ k, atol=1e-3)


def test_halting_head_starts_pessimistic() -> None:
    out = TinyRecursiveModel(SMALL)(tokens(), n_sup=1)[0]
    assert torch.sigmoid(out.halt_logit).max() < 0.5


@pytest.mark.parametrize(
    "config",
    [
        TRMConfig(),
        TRMConfig(patch=4, dim=64),
        TRMConfig(mixer="mlp", dim=32, heads=2),
    ],
)
def test_analytic_flops_match_torch_flop_counter(config: TRMConfig) -> None:
    model = TinyRecursiveModel(config).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(tokens(1), n_sup=1)
    assert counter.get_total_flops() == flops_per_step(config)


def test_default_config_meets_compute_budget() -> None:
    config = TRMConfig()
    assert count_parameters(TinyRecursiveModel(config)) < 2_000_000
    assert flops_per_step(config) < 0.3e9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 30, "heads": 4}, "divisible by heads"),
        ({"dim": 24, "heads": 4}, "by 4"),
        ({"n": 0}, "at least 1"),
    ],
)
def test_invalid_configs_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TRMConfig(**kwargs)


def test_config_round_trips_through_dict() -> None:
    config = TRMConfig(patch=4, mixer="mlp")
    assert TRMConfig.from_dict(config.to_dict()) == config


STEM = TRMConfig(dim=32, heads=2, grid=64, in_channels=2, stem=(8, 16, 32))


def _area(batch: int) -> torch.Tensor:
    return torch.rand(batch, 2, 64, 64)


def test_a_conv_stem_turns_the_whole_area_input_into_tokens() -> None:
    model = TinyRecursiveModel(STEM).eval()
    assert STEM.side == 8 and STEM.tokens == 65
    with torch.no_grad():
        outputs = model(_area(3))
    assert len(outputs) == STEM.n_sup
    assert outputs[0].logits.shape == (3, STEM.num_classes)
    assert outputs[0].y.shape == (3, 65, 32)


def test_stem_flops_match_torch_flop_counter() -> None:
    model = TinyRecursiveModel(STEM).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(_area(1), n_sup=1)
    assert counter.get_total_flops() == flops_per_step(STEM)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"grid": 64, "in_channels": 2}, "needs a stem"),
        ({"grid": 60, "in_channels": 2, "stem": (8, 16, 32)}, "divides the grid"),
        ({"stem": (8,)}, "set in_channels"),
    ],
)
def test_stem_configs_are_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TRMConfig(dim=32, heads=2, **kwargs)  # type: ignore[arg-type]


def test_a_stem_config_round_trips_through_dict() -> None:
    assert TRMConfig.from_dict(STEM.to_dict()) == STEM
