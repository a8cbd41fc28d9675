"""CLAM agent modelling's core (marl/agent_modeling/): views, NT-Xent, encoder, EMA, training.

Ma et al. 2024 (CLAM); Chen et al. 2020 (SimCLR, NT-Xent); Lee et al. 2019 (Set Transformer)."""

from __future__ import annotations

import math

import pytest
import torch

from marl.agent_modeling import AGENT_MODELS, CLAM, CLAMEncoder, make_agent_model, nt_xent
from marl.agent_modeling.augment import two_views

F_DIM = 5


@pytest.fixture(autouse=True)
def one_thread():
    # Two intra-op threads on a loaded 2-core machine run these small models ~30x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



def source_histories(b: int, t: int, seed: int = 0):
    """hist[b, s] = (s + 1, b + 1, noise...) on the valid prefix, −7 past it (must never be cropped)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[:4] = torch.tensor([1, 3, 8, t])
    hist = torch.full((b, t, F_DIM), -7.0)
    steps = torch.arange(t, dtype=torch.float32)
    for i in range(b):
        n = int(lengths[i])
        hist[i, :n, 0] = steps[:n] + 1
        hist[i, :n, 1] = i + 1
        hist[i, :n, 2:] = torch.rand(n, F_DIM - 2, generator=g) + 0.5  # nonzero
    return hist, lengths


def test_two_views_crop_and_mask_contract():
    hist, lengths = source_histories(512, 50)
    x1, v1, x2, v2 = two_views(hist, lengths, torch.Generator().manual_seed(1))
    b, width = v1.shape
    assert x1.shape == x2.shape == (b, width, F_DIM) and v2.shape == (b, width)
    c1, c2 = v1.sum(1), v2.sum(1)
    assert width == 48  # min(crop_max, T): fixed, so the host never reads a crop length back
    steps = torch.arange(width)
    for c, v, x in ((c1, v1, x1), (c2, v2, x2)):
        assert torch.equal(v, steps[None] < c[:, None])  # left-aligned; the rest is padding
        assert (c >= 1).all() and (c <= lengths).all() and (c <= 48).all()
        assert (c[lengths >= 8] >= 8).all()
        assert (x[~v] == 0).all()
    assert (c1 != c2).any()  # independent crops
    starts = []
    for i in range(b):
        n, src = int(lengths[i]), hist[i]
        # View 2: an unmasked contiguous slice of the valid prefix.
        k = int(c2[i])
        s = int(x2[i, 0, 0]) - 1
        starts.append(s)
        assert 0 <= s and s + k <= n and torch.equal(x2[i, :k], src[s:s + k])
        # View 1: exactly ceil(0.3·len) zeroed steps (still valid); the rest a contiguous slice.
        k = int(c1[i])
        zeroed = (x1[i, :k] == 0).all(dim=1)
        assert int(zeroed.sum()) == -(-3 * k // 10)
        kept = (~zeroed).nonzero().flatten()
        if len(kept):
            s = int(x1[i, kept[0], 0]) - 1 - int(kept[0])
            assert 0 <= s and s + k <= n
            assert torch.equal(x1[i, kept], src[s + kept])
    assert len(set(starts)) > 10  # crops start anywhere in the prefix, not only at 0


def test_crop_lengths_cover_8_to_48():
    hist = torch.randn(1024, 50, F_DIM)
    _, v1, _, v2 = two_views(hist, torch.full((1024,), 50), torch.Generator().manual_seed(2))
    assert set(v1.sum(1).tolist()) == set(range(8, 49)) == set(v2.sum(1).tolist())


def test_two_views_deterministic_under_the_generator():
    hist, lengths = source_histories(16, 50)
    a = two_views(hist, lengths, torch.Generator().manual_seed(3))
    b = two_views(hist, lengths, torch.Generator().manual_seed(3))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_nt_xent_hand_computed_2x2():
    e = torch.eye(2)
    # Matched: each view's positive has cosine 1, its 2 negatives cosine 0 (τ = 0.5):
    # ℓ = −log(e^2 / (e^2 + 1 + 1)) for each of the 4 views. Scale must not matter.
    assert nt_xent(e, 3 * e, 0.5).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), abs=1e-6)
    # Swapped: the positive has cosine 0, one negative cosine 1: ℓ = −log(1 / (1 + 1 + e^2)).
    assert nt_xent(e, e.flip(0), 0.5).item() == pytest.approx(math.log(2 + math.exp(2)), abs=1e-6)


def test_nt_xent_lower_for_matched_views_than_shuffled():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(32, 16, generator=g)
    z2 = z1 + 0.1 * torch.randn(32, 16, generator=g)
    shuffled = z2.roll(1, dims=0)  # every sample paired with another's view
    assert nt_xent(z1, z2).item() < nt_xent(z1, shuffled).item() - 1.0


def test_encoder_ignores_padding():
    torch.manual_seed(0)
    enc = CLAMEncoder(F_DIM).eval()
    x = torch.randn(6, 20, F_DIM)
    lengths = torch.tensor([1, 2, 7, 12, 19, 20])
    valid = torch.arange(20)[None] < lengths[:, None]
    out = enc(x, valid)
    # Garbage in the padding, then 15 more padding steps (NaN included): same output.
    x_pad = torch.cat([x, torch.full((6, 15, F_DIM), float("nan"))], dim=1)
    x_pad[:, :20][~valid] = 1e3
    valid_pad = torch.cat([valid, torch.zeros(6, 15, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(enc(x_pad, valid_pad), out, rtol=0, atol=1e-5)
    assert torch.isfinite(out[0]).all()  # a single valid step


def test_encoder_positions_past_max_len_are_computed_not_clamped():
    torch.manual_seed(0)
    short = CLAMEncoder(F_DIM, max_len=50).eval()
    long = CLAMEncoder(F_DIM, max_len=100).eval()
    long.load_state_dict(short.state_dict())  # the positional table is not state
    x, valid = torch.randn(3, 70, F_DIM), torch.ones(3, 70, dtype=torch.bool)
    torch.testing.assert_close(short(x, valid), long(x, valid))


def test_representation_exists_at_first_step_and_is_unit_norm():
    torch.manual_seed(0)
    model = CLAM(F_DIM)
    hist = torch.randn(8, 50, F_DIM)
    r = model.represent(hist, torch.ones(8, dtype=torch.long))
    assert r.shape == (8, model.repr_dim) == (8, 20)
    assert torch.isfinite(r).all()
    torch.testing.assert_close(r.norm(dim=1), torch.ones(8))
    # Only the prefix counts: the future of the episode does not leak in.
    hist2 = hist.clone()
    hist2[:, 1:] = torch.randn(8, 49, F_DIM)
    torch.testing.assert_close(model.represent(hist2, torch.ones(8, dtype=torch.long)), r)


def test_ema_lags_online_by_the_momentum():
    torch.manual_seed(0)
    model = CLAM(F_DIM, momentum=0.9)
    for enc in (model.encoder, model.ema_encoder):  # a persistent buffer must be averaged too
        enc.register_buffer("running", torch.randn(3))
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.copy_(torch.randn_like(p))
    old = {k: v.clone() for k, v in model.ema_encoder.state_dict().items()}
    new = model.encoder.state_dict()
    assert not all(torch.equal(old[k], new[k]) for k in old)
    model.ema_update()
    ema = model.ema_encoder.state_dict()
    assert "running" in ema
    for k in old:
        assert torch.equal(ema[k], 0.9 * old[k] + (1 - 0.9) * new[k]), k
    # The constant positional table stays bitwise the online one.
    assert torch.equal(model.ema_encoder.positional, model.encoder.positional)
    assert all(not p.requires_grad for p in model.ema_encoder.parameters())


def test_represent_reads_the_ema_encoder_not_the_online_one():
    torch.manual_seed(0)
    model = CLAM(F_DIM, momentum=0.5)
    hist, lengths = torch.randn(4, 50, F_DIM), torch.tensor([1, 10, 30, 50])
    before = model.represent(hist, lengths)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    torch.testing.assert_close(model.represent(hist, lengths), before, rtol=0, atol=0)
    model.ema_update()
    assert not torch.allclose(model.represent(hist, lengths), before, atol=1e-3)
    # Exactly the EMA encoder on the prefix alone, L2-normalised.
    expected = torch.stack([
        torch.nn.functional.normalize(
            model.ema_encoder(hist[i:i + 1, :n], torch.ones(1, n, dtype=torch.bool))[0], dim=0)
        for i, n in enumerate(lengths.tolist())
    ])
    torch.testing.assert_close(model.represent(hist, lengths), expected, rtol=0, atol=1e-5)


def test_encoder_gradient_comes_only_from_the_contrastive_loss():
    torch.manual_seed(0)
    model = CLAM(F_DIM)
    hist = torch.randn(16, 50, F_DIM)
    lengths = torch.randint(1, 51, (16,))
    r = model.represent(hist, lengths)
    assert not r.requires_grad and r.grad_fn is None
    assert all(p.grad is None for p in model.parameters())
    loss, stats = model.contrastive_loss(hist, lengths, torch.Generator().manual_seed(0))
    assert stats["contrastive_loss"] == pytest.approx(loss.item())
    loss.backward()
    for name, p in [*model.encoder.named_parameters(), *model.projection.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.ema_encoder.parameters())
    ids = {id(p) for p in model.online_parameters()}
    assert ids == {id(p) for p in [*model.encoder.parameters(), *model.projection.parameters()]}


def typed_episodes(n: int, g: torch.Generator, t: int = 50):
    """4 behaviour types, each a periodic pattern (period 3, 5, 9 or 17 steps) around its own
    drift direction; random phase and amplitude per episode, noise per step."""
    types = torch.randint(0, 4, (n,), generator=g)
    period = torch.tensor([3.0, 5.0, 9.0, 17.0])[types]
    phase = torch.rand(n, generator=g) * 2 * math.pi
    amplitude = 0.5 + torch.rand(n, 1, generator=g)
    angle = 2 * math.pi * torch.arange(t)[None] / period[:, None] + phase[:, None]
    heading = math.pi / 2 * types[:, None].float()
    hist = torch.stack([amplitude * angle.sin(), amplitude * angle.cos(),
                        0.15 * heading.cos().expand(-1, t), 0.15 * heading.sin().expand(-1, t)], dim=-1)
    return hist + 0.5 * torch.randn(hist.shape, generator=g), types


def probe_accuracy(model: CLAM, length: int, t: int) -> float:
    """Logistic regression on represent() of 200 episodes, scored on 200 others (chance 0.25)."""
    from sklearn.linear_model import LogisticRegression

    hist, types = typed_episodes(400, torch.Generator().manual_seed(5), t)
    r = model.represent(hist, torch.full((400,), length)).numpy()
    probe = LogisticRegression(max_iter=2000).fit(r[:200], types[:200].numpy())
    return probe.score(r[200:], types[200:].numpy())


def test_contrastive_training_makes_types_linearly_separable():
    # A narrower encoder and shorter episodes than the paper's (width 128, 50 steps), to keep
    # the test at ~5 s of CPU; the architecture, loss, views and optimiser are the paper's.
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    t, b = 30, 32
    model = CLAM(4, width=32, max_len=t, crop_max=t - 2)
    untrained = probe_accuracy(model, t, t)
    opt = torch.optim.Adam(model.online_parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        hist, _ = typed_episodes(b, g, t)
        loss, _ = model.contrastive_loss(hist, torch.full((b,), t), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.ema_update()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.3
    trained = probe_accuracy(model, t, t)
    assert trained > 0.55 and trained > untrained + 0.1, (untrained, trained)  # chance: 0.25


def test_make_agent_model_registry():
    model = make_agent_model({"name": "clam", "repr_dim": 8, "momentum": 0.95}, feat_dim=4)
    assert isinstance(model, CLAM) and model.repr_dim == 8 and model.momentum == 0.95
    assert AGENT_MODELS["clam"] is CLAM
    with pytest.raises(ValueError, match="'clam'"):
        make_agent_model({"name": "lily"}, feat_dim=4)
    with pytest.raises(ValueError, match="temprature"):
        make_agent_model({"name": "clam", "temprature": 0.5}, feat_dim=4)
    with pytest.raises(ValueError, match="momentum"):
        make_agent_model({"name": "clam", "momentum": 1.5}, feat_dim=4)
