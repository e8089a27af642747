import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cloud.models.cnn import BaselineCNN, CNNConfig, count_parameters, flops_per_wafer
from wafercore.classes import NUM_CLASSES


def test_logits_shape_for_flat_tokens_and_grids() -> None:
    model = BaselineCNN().eval()
    tokens = torch.randint(0, 3, (5, 676))
    with torch.no_grad():
        flat = model(tokens)
        grid = model(tokens.view(5, 26, 26))
    assert flat.shape == (5, NUM_CLASSES)
    assert torch.equal(flat, grid)


def test_parameter_count_matches_the_architecture() -> None:
    # One-hot input (3 channels), bias-free convs (BatchNorm shifts), 32-64-128, linear head.
    convs = 3 * 32 * 9 + 32 * 64 * 9 + 64 * 128 * 9
    norms = 2 * (32 + 64 + 128)
    head = 128 * NUM_CLASSES + NUM_CLASSES
    assert count_parameters(BaselineCNN()) == convs + norms + head == 94_633
    # The two-convs-per-block variant is the "289K" figure quoted for this baseline.
    assert 280_000 < count_parameters(BaselineCNN(CNNConfig(convs_per_block=2))) < 300_000


@pytest.mark.parametrize("convs", [1, 2])
def test_analytic_flops_match_torch_counter(convs: int) -> None:
    config = CNNConfig(convs_per_block=convs)
    model = BaselineCNN(config).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, 3, (1, 676)))
    assert counter.get_total_flops() == flops_per_wafer(config)


def test_one_hot_tells_all_three_die_values_apart() -> None:
    torch.manual_seed(0)
    model = BaselineCNN().eval()
    grids = torch.stack([torch.full((676,), v) for v in (0, 1, 2)])  # all pass, fail, outside
    with torch.no_grad():
        out = model(grids)
    assert not torch.allclose(out[0], out[1])
    assert not torch.allclose(out[1], out[2])
    assert not torch.allclose(out[0], out[2])
    with pytest.raises(RuntimeError):
        model(torch.full((1, 676), 3))


def test_it_learns_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = BaselineCNN(CNNConfig(channels=(8, 16, 32)))  # small: this is about wiring
    tokens = torch.randint(0, 3, (9, 676))
    labels = torch.arange(9) % NUM_CLASSES
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    first = None
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(tokens), labels)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_config_round_trips_through_json_and_validates() -> None:
    config = CNNConfig(channels=(8, 16, 32), convs_per_block=2)
    assert CNNConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError):
        CNNConfig(channels=())
    with pytest.raises(ValueError):
        CNNConfig(channels=(8,) * 6)  # 26 cells cannot be halved six times
