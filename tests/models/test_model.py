"""MGIDNet, Encoder, Decoder and MemoryModule: architecture, shapes, padding, memory state, gradients."""
from __future__ import annotations

import math

import pytest
import torch

from mgid import ops
from mgid.models import DOWNSAMPLE, Decoder, Encoder, MemoryModule, MGIDNet, ModelConfig, pad_to_multiple

# The public architecture (docs/ALGORITHM.md "Network"); pinned so it cannot drift.
PARAMS_TOTAL = 817_987
PARAMS_ENCODER = 261_184
PARAMS_DECODER = 556_803


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def images(b: int = 2, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1


@pytest.fixture
def net() -> MGIDNet:
    torch.manual_seed(0)
    return MGIDNet(generator=torch.Generator().manual_seed(0))


# --- architecture -------------------------------------------------------------------------------

def test_parameter_counts(net):
    assert n_params(net.encoder) == PARAMS_ENCODER
    assert n_params(net.decoder) == PARAMS_DECODER
    assert n_params(net.memory) == 0
    assert n_params(net) == PARAMS_TOTAL


def test_resize_conv_upsampling_keeps_the_parameter_count():
    """The checkerboard-free decoder (nearest 2x + conv3x3) has exactly the paper's parameter count."""
    torch.manual_seed(0)
    resize = MGIDNet(ModelConfig(upsample="resize_conv"), generator=torch.Generator().manual_seed(0))
    assert n_params(resize.decoder) == PARAMS_DECODER and n_params(resize) == PARAMS_TOTAL
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in resize.modules())
    out = resize(images())
    assert out.rain.shape == images().shape
    with pytest.raises(ValueError, match="upsample"):
        ModelConfig(upsample="bilinear-ish")


def test_config_changes_width_and_items():
    small = MGIDNet(ModelConfig(channels=8, memory_items=5))
    assert small.memory.items.shape == (5, 8)
    out = small(images())
    assert out.query.shape == (2, 8, 2, 2)
    assert n_params(small) < PARAMS_TOTAL


def test_config_validation():
    with pytest.raises(ValueError, match="memory_items"):
        ModelConfig(memory_items=1)
    with pytest.raises(ValueError, match="pad_mode"):
        ModelConfig(pad_mode="zeros")
    cfg = ModelConfig(memory_items=30, double_tanh=False)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_encoder_decoder_shapes():
    enc, dec = Encoder(3, 64), Decoder(64, 3)
    x = images(1, 32, 24)
    feats = enc(x)
    assert feats.query.shape == (1, 64, 4, 3)
    assert [s.shape[-2:] for s in feats.skips] == [(32, 24), (16, 12), (8, 6)]
    # Instance norm: zero mean, unit variance per sample and channel.
    q = feats.query.flatten(2)
    assert torch.allclose(q.mean(-1), torch.zeros(1, 64), atol=1e-5)
    out = dec(torch.cat([feats.query, feats.query], dim=1), feats.skips)
    assert out.shape == (1, 3, 32, 24)
    assert out.abs().max() < 1  # tanh head


# --- forward ------------------------------------------------------------------------------------

def test_forward_shapes_train(net):
    x = images(2, 16, 32)
    out = net(x)
    assert out.rain.shape == out.background.shape == x.shape
    assert out.query.shape == (2, 64, 2, 4)
    assert out.compactness.dim() == 0 and out.separateness.dim() == 0
    assert torch.allclose(out.background + out.rain, x, atol=1e-6)


def test_eval_forward_has_no_memory_losses_unless_asked(net):
    net.eval()
    out = net(images())
    assert out.compactness is None and out.separateness is None
    out = net(images(), memory_losses=True)
    assert out.compactness is not None and out.separateness is not None


def test_double_tanh_switch(net):
    x = images()
    bound = math.tanh(1.0)
    out = net(x, update_memory=False)
    assert out.rain.abs().max() <= bound + 1e-6
    single = MGIDNet(ModelConfig(double_tanh=False))
    single.load_state_dict(net.state_dict())
    out_single = single(x, update_memory=False)
    assert torch.allclose(out.rain, torch.tanh(out_single.rain), atol=1e-6)


@pytest.mark.parametrize("h,w", [(20, 28), (17, 9), (8, 16), (13, 40)])
def test_not_multiple_of_8_is_padded_and_cropped(net, h, w):
    x = images(1, h, w)
    out = net(x)
    assert out.rain.shape == out.background.shape == x.shape
    assert out.query.shape[-2:] == (math.ceil(h / DOWNSAMPLE), math.ceil(w / DOWNSAMPLE))


def test_crop_matches_running_on_padded_input(net):
    net.eval()
    x = images(1, 20, 28)
    padded = pad_to_multiple(x, DOWNSAMPLE)
    assert padded.shape[-2:] == (24, 32)
    assert torch.equal(padded[..., :20, :28], x)
    assert torch.allclose(net(x).rain, net(padded).rain[..., :20, :28], atol=1e-6)


def test_input_errors(net):
    with pytest.raises(ValueError, match="shape"):
        net(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="batch dimension"):
        net(torch.zeros(3, 16, 16))
    with pytest.raises(TypeError, match="floating"):
        net(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(TypeError):
        net([[0.0]])
    with pytest.raises(ValueError, match="too small"):
        net(torch.zeros(1, 3, 8, 8))


def test_derain_eval_and_restores_mode(net):
    net.train()
    before = net.memory.items.clone()
    x = images(1, 20, 20)
    bg = net.derain(x)
    assert bg.shape == x.shape and not bg.requires_grad
    assert net.training
    assert torch.equal(net.memory.items, before)
    net.eval()
    assert torch.allclose(bg, net(x).background)


# --- memory state -------------------------------------------------------------------------------

def test_items_are_unit_norm_buffer(net):
    names = dict(net.named_buffers())
    assert "memory.items" in names
    assert all("items" not in n for n, _ in net.named_parameters())
    items = net.memory.items
    assert items.shape == (20, 64) and not items.requires_grad
    assert torch.allclose(items.norm(dim=1), torch.ones(20), atol=1e-6)
    assert "memory.items" in net.state_dict()


def test_items_seedable():
    a = MemoryModule(20, 64, generator=torch.Generator().manual_seed(3))
    b = MemoryModule(20, 64, generator=torch.Generator().manual_seed(3))
    c = MemoryModule(20, 64, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.items, b.items) and not torch.equal(a.items, c.items)
    assert (a.items >= 0).all()  # uniform [0, 1) before normalising
    a.reset_items(torch.Generator().manual_seed(4))
    assert torch.equal(a.items, c.items)


def test_items_update_in_train_only(net):
    x = images()
    before = net.memory.items.clone()
    net.eval()
    net(x)
    assert torch.equal(net.memory.items, before)
    net.train()
    net(x, update_memory=False)
    assert torch.equal(net.memory.items, before)
    net(x)
    after = net.memory.items
    assert not torch.equal(after, before)
    assert torch.allclose(after.norm(dim=1), torch.ones(20), atol=1e-6)


def test_memory_reads_old_items_then_stores_update():
    mem = MemoryModule(6, 8, generator=torch.Generator().manual_seed(1))
    q = torch.randn(2, 8, 2, 3, generator=torch.Generator().manual_seed(2))
    p0 = mem.items.clone()
    out = mem(q, update=True)
    assert torch.allclose(out.features, ops.memory_read(q, p0))
    c, s = ops.memory_losses(q, p0)
    assert torch.allclose(out.compactness, c) and torch.allclose(out.separateness, s)
    assert torch.allclose(mem.items, ops.memory_update(q, p0))
    read_only = mem(q, update=False)
    assert read_only.compactness is None
    assert torch.allclose(read_only.features, ops.memory_read(q, mem.items))


def test_two_frames_read_p_then_p_prime(net):
    x1, x2 = images(seed=1), images(seed=2)
    p0 = net.memory.items.clone()
    out1 = net(x1)
    p1 = net.memory.items.clone()
    out2 = net(x2)
    assert torch.allclose(p1, ops.memory_update(out1.query.detach(), p0))
    assert torch.allclose(net.memory.items, ops.memory_update(out2.query.detach(), p1))
    # Frame 2's memory losses are against P'.
    c2, _ = ops.memory_losses(out2.query.detach(), p1)
    assert torch.allclose(out2.compactness, c2)


def test_state_dict_round_trip_keeps_items(net):
    net(images())  # move the items away from their initial values
    other = MGIDNet(generator=torch.Generator().manual_seed(99))
    assert not torch.equal(other.memory.items, net.memory.items)
    other.load_state_dict(net.state_dict())
    assert torch.equal(other.memory.items, net.memory.items)


# --- gradients ----------------------------------------------------------------------------------

@pytest.mark.parametrize("grad_through_weights", [False, True])
def test_gradient_reaches_encoder_across_two_updates(grad_through_weights):
    torch.manual_seed(0)
    net = MGIDNet(ModelConfig(grad_through_weights=grad_through_weights))
    out1, out2 = net(images(seed=1)), net(images(seed=2))  # in-place item updates between frames
    loss = (out1.background - out2.background).abs().mean() + out1.compactness + out2.compactness
    loss.backward()
    grad = net.encoder.stage1[0][0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())
    assert net.memory.items.grad is None
