"""The decoder's concatenation order (`ModelConfig.concat_order`) and weights in the public MGID code's naming
(`mgid.models.official`).

The public network is rebuilt here from its documented structure (module names and ``nn.Sequential`` layouts of
``model/Reconstruction_skip.py``, MNAD's ``Basic``/``Basic_``/``Gen``/``Upsample`` blocks), so its state dict has
the official names; its forward pass follows the public code's order: ``cat([skip, upsampled])``, a second tanh,
B = I - R."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mgid import ops
from mgid.models import MGIDNet, ModelConfig, convert_official_state_dict
from mgid.models.official import OFFICIAL_MODULES, OFFICIAL_UNUSED

WIDTH = 64  # the public code's width (fixed there)


def images(b: int = 2, h: int = 16, w: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


def _basic(cin: int, cout: int) -> nn.Sequential:  # conv-BN-ReLU twice
    return nn.Sequential(_conv(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(), _conv(cout, cout), nn.BatchNorm2d(cout),
                         nn.ReLU())


def _upsample(c: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1), nn.BatchNorm2d(c),
                         nn.ReLU())


class OfficialEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.moduleConv1 = _basic(3, WIDTH)
        self.moduleConv2 = _basic(WIDTH, WIDTH)
        self.moduleConv3 = _basic(WIDTH, WIDTH)
        self.modulePool1 = self.modulePool2 = self.modulePool3 = nn.MaxPool2d(2, 2)
        self.moduleConv4 = nn.Sequential(_conv(WIDTH, WIDTH), nn.BatchNorm2d(WIDTH), nn.ReLU(), _conv(WIDTH, WIDTH))
        self.moduleBatchNorm = nn.BatchNorm2d(WIDTH)  # declared, never called
        self.moduleReLU = nn.ReLU()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c1 = self.moduleConv1(x)
        c2 = self.moduleConv2(self.modulePool1(c1))
        c3 = self.moduleConv3(self.modulePool2(c2))
        return c1, c2, c3, self.moduleConv4(self.modulePool3(c3))


class OfficialDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.moduleConv = _basic(2 * WIDTH, WIDTH)
        self.moduleUpsample4 = _upsample(WIDTH)
        self.moduleDeconv3 = _basic(2 * WIDTH, WIDTH)
        self.moduleUpsample3 = _upsample(WIDTH)
        self.moduleDeconv2 = _basic(2 * WIDTH, WIDTH)
        self.moduleUpsample2 = _upsample(WIDTH)
        self.moduleDeconv1 = nn.Sequential(_conv(2 * WIDTH, WIDTH), nn.BatchNorm2d(WIDTH), nn.ReLU(),
                                           _conv(WIDTH, WIDTH), nn.BatchNorm2d(WIDTH), nn.ReLU(), _conv(WIDTH, 3),
                                           nn.Tanh())

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor, x4: torch.Tensor) -> torch.Tensor:
        up = self.moduleUpsample4(self.moduleConv(x4))
        up = self.moduleUpsample3(self.moduleDeconv3(torch.cat([x3, up], dim=1)))
        up = self.moduleUpsample2(self.moduleDeconv2(torch.cat([x2, up], dim=1)))
        return self.moduleDeconv1(torch.cat([x1, up], dim=1))


class OfficialNet(nn.Module):
    """``convAE``'s parameter-holding modules (its memory and instance norm hold none)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = OfficialEncoder(), OfficialDecoder()
        self.instNorm = nn.InstanceNorm2d(WIDTH)

    def background(self, x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The test-mode output: B = I - tanh(decoder output), the memory only read."""
        c1, c2, c3, c4 = self.encoder(x)
        streak = self.decoder(c1, c2, c3, ops.memory_read(self.instNorm(c4), items))
        return x - torch.tanh(streak)


def official_net(seed: int = 0) -> OfficialNet:
    """An official network in eval mode with random weights and random BatchNorm statistics."""
    torch.manual_seed(seed)
    net = OfficialNet().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net


def unit_items(m: int = 20, seed: int = 1) -> torch.Tensor:
    return nn.functional.normalize(torch.rand(m, WIDTH, generator=torch.Generator().manual_seed(seed)), dim=1)


# --- concatenation order --------------------------------------------------------------------------

BLOCK_INPUT_CONVS = ("decoder.block3.0.0.weight", "decoder.block2.0.0.weight", "decoder.head.0.0.weight")


def test_the_two_concat_orders_are_one_network_with_permuted_input_channels():
    """Swapping the halves of the three blocks' first-conv input channels turns one order into the other."""
    cfg = ModelConfig(channels=8, memory_items=5)
    torch.manual_seed(0)
    ours = MGIDNet(cfg).double().eval()
    official = MGIDNet(ModelConfig(channels=8, memory_items=5, concat_order="skip_first")).double().eval()
    state = ours.state_dict()
    assert set(official.state_dict()) == set(state)  # the same parameters, names and shapes
    official.load_state_dict(state)
    x = images().double()
    assert not torch.allclose(official(x).rain, ours(x).rain)  # the order matters with the same weights...
    c = cfg.channels
    for name in BLOCK_INPUT_CONVS:
        w = state[name]
        state[name] = torch.cat([w[:, c:], w[:, :c]], dim=1)  # [upsampled, skip] -> [skip, upsampled]
    official.load_state_dict(state)
    torch.testing.assert_close(official(x).rain, ours(x).rain, rtol=0, atol=1e-12)  # ...and is only an order


def test_concat_order_default_and_choices():
    assert ModelConfig().concat_order == "upsampled_first"  # the shipped weights' order
    with pytest.raises(ValueError, match="concat_order must be one of upsampled_first, skip_first"):
        ModelConfig(concat_order="skip_last")
    cfg = ModelConfig(concat_order="skip_first")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    net = MGIDNet(cfg)
    assert net.decoder.skip_first and not MGIDNet().decoder.skip_first


# --- the official naming ---------------------------------------------------------------------------

def test_official_state_dict_converts_loads_and_computes_the_same():
    official = official_net()
    state = official.state_dict()
    assert "encoder.moduleConv1.0.weight" in state and "decoder.moduleDeconv1.6.bias" in state
    assert "encoder.moduleBatchNorm.running_var" in state
    items = unit_items()
    converted = convert_official_state_dict(state, items)
    net = MGIDNet(ModelConfig(concat_order="skip_first")).eval()
    net.load_state_dict(converted, strict=True)  # every parameter and buffer, nothing extra
    assert torch.equal(net.memory.items, items)
    x = images()
    with torch.no_grad():
        pre_norm, skips = net.encoder.pre_norm_features(x)
        c1, c2, c3, c4 = official.encoder(x)
        for a, b in zip((*skips, pre_norm), (c1, c2, c3, c4)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(net(x).background, official.background(x, items), rtol=1e-5, atol=1e-5)
    # without the items: everything else, loaded non-strictly
    missing, unexpected = MGIDNet(ModelConfig(concat_order="skip_first")).load_state_dict(
        convert_official_state_dict(state), strict=False)
    assert missing == ["memory.items"] and unexpected == []


def test_official_bgr_weights_on_rgb_images():
    """``bgr_to_rgb=True`` makes the converted network take RGB and give what the BGR one gives on BGR."""
    state, items = official_net(seed=3).state_dict(), unit_items(seed=4)
    bgr, rgb = (MGIDNet(ModelConfig(concat_order="skip_first")).eval() for _ in range(2))
    bgr.load_state_dict(convert_official_state_dict(state, items))
    rgb.load_state_dict(convert_official_state_dict(state, items, bgr_to_rgb=True))
    x = images(1, 16, 16, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(rgb(x).background, bgr(x.flip(1)).background.flip(1), rtol=1e-5, atol=1e-5)
    assert torch.equal(state["encoder.moduleConv1.0.weight"], convert_official_state_dict(state)[
        "encoder.stage1.0.0.weight"])  # the input untouched


def test_official_conversion_errors():
    state = official_net().state_dict()
    with pytest.raises(ValueError, match=r"'decoder.moduleDeconv0.0.weight' is not a parameter"):
        convert_official_state_dict({**state, "decoder.moduleDeconv0.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"'model' state dict"):
        convert_official_state_dict({"model": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"\(M, C\)"):
        convert_official_state_dict(state, torch.zeros(20))
    partial = {k: v for k, v in state.items() if not k.startswith("decoder.moduleDeconv1.")}
    with pytest.raises(ValueError, match="bgr_to_rgb needs"):
        convert_official_state_dict(partial, bgr_to_rgb=True)
    # the table covers every module of the public network that holds parameters or buffers
    assert set(OFFICIAL_MODULES) | set(OFFICIAL_UNUSED) == {".".join(k.split(".")[:2]) for k in state}
