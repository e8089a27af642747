"""The VAE of known patterns: shapes, a loss that ignores what lies outside the wafer, a
deterministic score and heatmap, and an export that ONNX Runtime runs the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cloud.models.vae import (
    DIE,
    FAIL,
    VAEConfig,
    VAEScorer,
    WaferVAE,
    novelty,
    rate_entropy,
    vae_loss,
)
from wafercore.model_input import InputSpec, build_input
from wafercore.synthetic import generate_dataset

SMALL = VAEConfig(size=32, channels=(8, 16), latent=4, beta=0.5)


def wafers(n_per_class: int = 2) -> torch.Tensor:
    dataset = generate_dataset(n_per_class, np.random.default_rng(0))
    spec = InputSpec(size=SMALL.size, resample="area", channels=("fail", "die"))
    return torch.as_tensor(build_input(list(dataset.maps()), spec))


def test_shapes_and_config_round_trip() -> None:
    vae = WaferVAE(SMALL).eval()
    x = wafers()
    logits, mu, logvar = vae(x)
    assert logits.shape == (len(x), 32, 32) and mu.shape == logvar.shape == (len(x), 4)
    assert VAEConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ValueError, match="divisible"):
        VAEConfig(size=30, channels=(8, 16))


def test_cells_outside_the_wafer_do_not_count() -> None:
    torch.manual_seed(0)
    vae = WaferVAE(SMALL).eval()
    x = wafers()
    logits, mu, logvar = vae(x)
    changed = x.clone()
    outside = changed[:, DIE] == 0
    assert outside.any()
    changed[:, FAIL][outside] = 1.0  # "fails" where there is no die
    first = vae_loss(logits, x, mu, logvar, SMALL.beta)[1]
    second = vae_loss(logits, changed, mu, logvar, SMALL.beta)[1]
    assert torch.allclose(first, second)
    _, heatmap = novelty(logits, x)
    assert torch.all(heatmap[outside] == 0)


def test_the_kl_term_is_zero_at_the_prior_and_beta_weights_it() -> None:
    logits = torch.zeros(2, 32, 32)
    x = wafers()[:2]
    zero = torch.zeros(2, 4)
    loss, reconstruction, kl = vae_loss(logits, x, zero, zero, beta=0.5)
    assert kl.item() == pytest.approx(0.0) and loss.item() == pytest.approx(reconstruction.item())
    shifted = torch.ones(2, 4)
    loss, reconstruction, kl = vae_loss(logits, x, shifted, zero, beta=0.5)
    assert kl.item() == pytest.approx(2.0)  # 0.5 * sum(mu^2) over 4 latents
    assert loss.item() == pytest.approx(reconstruction.item() + 1.0)
    # All-zero logits predict p = 0.5 everywhere: ln 2 per die, summed over each wafer's die.
    die = x[:, DIE].sum(dim=(1, 2)).mean().item()
    assert reconstruction.item() == pytest.approx(float(np.log(2)) * die, rel=1e-5)


def test_a_few_steps_on_known_patterns_lower_their_loss() -> None:
    torch.manual_seed(0)
    vae = WaferVAE(SMALL)
    x = wafers(4)
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        logits, mu, logvar = vae(x)
        loss = vae_loss(logits, x, mu, logvar, SMALL.beta)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_the_scorer_is_deterministic_and_exports_to_onnx(tmp_path: Path) -> None:
    torch.manual_seed(0)
    scorer = VAEScorer(WaferVAE(SMALL)).eval()
    x = wafers()
    with torch.no_grad():
        score, heatmap, mu = scorer(x)
        again = scorer(x)[0]
    assert torch.equal(score, again) and score.shape == (len(x),)
    assert heatmap.shape == (len(x), 32, 32) and torch.all(torch.isfinite(score))
    path = tmp_path / "vae.onnx"
    torch.onnx.export(
        scorer,
        (x[:2],),
        str(path),
        input_names=["x"],
        output_names=["novelty", "heatmap", "latent"],
        dynamic_axes={name: {0: "batch"} for name in ("x", "novelty", "heatmap", "latent")},
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got_score, got_heatmap, got_mu = session.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got_score, score.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_heatmap, heatmap.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_mu, mu.numpy(), rtol=1e-4, atol=1e-5)


def test_a_reconstruction_that_knows_only_the_fail_rate_pays_its_entropy() -> None:
    x = wafers()
    die = x[:, DIE].sum(dim=(1, 2))
    rate = (x[:, FAIL] * x[:, DIE]).sum(dim=(1, 2)) / die
    constant = torch.logit(rate)[:, None, None].expand(-1, 32, 32)
    score, _ = novelty(constant, x)
    torch.testing.assert_close(score, rate_entropy(x), atol=1e-4, rtol=0)


def test_the_exported_score_stays_finite_for_extreme_reconstructions(tmp_path: Path) -> None:
    """A decoder sure of itself (huge logits) must not make the graph's score NaN: a node would
    send it, and the fab refuses a result whose novelty score is not finite."""
    torch.manual_seed(0)
    vae = WaferVAE(SMALL).eval()
    with torch.no_grad():
        vae.decoder[-1].weight.mul_(1e4)
        vae.decoder[-1].bias.fill_(-1e4)
    path = tmp_path / "vae.onnx"
    torch.onnx.export(
        VAEScorer(vae),
        (wafers()[:2],),
        str(path),
        input_names=["x"],
        output_names=["score", "heatmap", "latent"],
        dynamic_axes={name: {0: "batch"} for name in ("x", "score", "heatmap", "latent")},
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    score, heatmap, _ = session.run(None, {"x": wafers().numpy()})
    assert np.isfinite(score).all() and np.isfinite(heatmap).all()
    assert (heatmap[wafers().numpy()[:, DIE] == 0] == 0).all()  # off-wafer cells: exactly 0
