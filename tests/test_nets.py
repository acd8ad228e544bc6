"""Score networks: EDM's SongUNet layout and sizes, presets, the registry, and the MLP."""

import math

import pytest
import torch
import torch.nn.functional as F

from zoo import plugins
from zoo.nets import build_network, count_parameters
from zoo.nets.songunet import Conv2d, PositionalEmbedding, UNetBlock

NAMES = ["ddpmpp", "ddpmpp-small", "mlp", "ncsnpp", "songunet"]


@pytest.fixture(scope="module")
def ddpmpp():
    torch.manual_seed(0)
    return build_network("ddpmpp", (3, 32, 32), augment_dim=9)


@pytest.fixture(scope="module")
def ncsnpp():
    torch.manual_seed(0)
    return build_network("ncsnpp", (3, 32, 32), augment_dim=9)


def test_registered_through_the_plugin_hook():
    assert set(NAMES) <= set(plugins.registry("networks").names())
    assert plugins.registry("networks").source("ddpmpp").startswith("zoo.nets")


def test_parameter_counts_match_edm_cifar10(ddpmpp, ncsnpp):
    # EDM's CIFAR-10 networks are trained with augment_dim=9 (train.py --augment).
    assert count_parameters(ddpmpp) == 55_733_891
    assert count_parameters(ncsnpp) == 56_397_827
    assert abs(count_parameters(ddpmpp) / 55.7e6 - 1) < 0.005
    assert abs(count_parameters(ncsnpp) / 56.4e6 - 1) < 0.005
    # Without the augmentation mapping: 9 × 128 parameters fewer.
    assert count_parameters(build_network("ddpmpp", (3, 32, 32))) == 55_733_891 - 9 * 128


def test_state_dict_uses_edm_names_and_shapes(ddpmpp, ncsnpp):
    sd = ddpmpp.state_dict()
    expected = {
        "map_augment.weight": (128, 9),
        "map_layer0.weight": (512, 128),
        "map_layer1.bias": (512,),
        "enc.32x32_conv.weight": (128, 3, 3, 3),
        "enc.32x32_block0.norm0.weight": (128,),
        "enc.32x32_block0.conv0.weight": (256, 128, 3, 3),
        "enc.32x32_block0.affine.weight": (256, 512),
        "enc.32x32_block0.skip.weight": (256, 128, 1, 1),
        "enc.16x16_down.conv0.resample_filter": (1, 1, 2, 2),
        "enc.16x16_down.skip.weight": (256, 256, 1, 1),
        "enc.16x16_block0.norm2.weight": (256,),
        "enc.16x16_block0.qkv.weight": (768, 256, 1, 1),
        "enc.16x16_block3.proj.bias": (256,),
        "dec.8x8_in0.qkv.weight": (768, 256, 1, 1),
        "dec.8x8_in1.conv1.weight": (256, 256, 3, 3),
        "dec.8x8_block0.conv0.weight": (256, 512, 3, 3),
        "dec.16x16_up.conv0.resample_filter": (1, 1, 2, 2),
        "dec.16x16_block4.qkv.weight": (768, 256, 1, 1),
        "dec.32x32_aux_norm.weight": (256,),
        "dec.32x32_aux_conv.weight": (3, 256, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "map_noise.freqs" not in sd  # EDM's positional embedding has no state
    assert "enc.32x32_block0.conv0.resample_filter" not in sd  # only resampling convs have one
    assert "dec.16x16_block3.qkv.weight" not in sd  # decoder attention only after the last block
    assert len(sd) == 425

    sd = ncsnpp.state_dict()
    assert tuple(sd["map_noise.freqs"].shape) == (128,)
    assert tuple(sd["map_layer0.weight"].shape) == (512, 256)
    assert tuple(sd["enc.16x16_aux_residual.weight"].shape) == (256, 3, 3, 3)
    assert tuple(sd["enc.8x8_aux_residual.weight"].shape) == (256, 256, 3, 3)
    assert tuple(sd["enc.16x16_down.conv0.resample_filter"].shape) == (1, 1, 4, 4)
    f = torch.tensor([1.0, 3, 3, 1])
    torch.testing.assert_close(sd["enc.16x16_down.conv0.resample_filter"][0, 0], f.outer(f) / 64)


def test_skip_encoder_and_decoder_names():
    net = build_network(
        "songunet",
        (3, 16, 16),
        model_channels=16,
        channel_mult=(1, 2),
        num_blocks=1,
        encoder_type="skip",
        decoder_type="skip",
    )
    sd = net.state_dict()
    assert tuple(sd["enc.8x8_aux_down.resample_filter"].shape) == (1, 1, 2, 2)
    assert "enc.8x8_aux_down.weight" not in sd  # kernel 0: filter only
    assert tuple(sd["enc.8x8_aux_skip.weight"].shape) == (16, 3, 1, 1)  # joins the down block
    assert "dec.16x16_aux_up.resample_filter" in sd
    assert {"dec.8x8_aux_conv.weight", "dec.16x16_aux_conv.weight"} <= set(sd)
    x = torch.randn(2, 3, 16, 16)
    assert net(x, torch.randn(2)).shape == x.shape


def test_full_size_forward_shape(ddpmpp, ncsnpp):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for net in (ddpmpp.eval(), ncsnpp.eval()):
            y = net(x, torch.randn(1))
            assert y.shape == x.shape and torch.isfinite(y).all()


def test_small_and_mlp_forward_backward():
    torch.manual_seed(0)
    for name, shape in [("ddpmpp-small", (1, 8, 8)), ("mlp", (2,))]:
        net = build_network(name, shape)
        x = torch.randn(16 if name == "mlp" else 4, *shape)
        y = net(x, torch.randn(x.shape[0]))
        assert y.shape == x.shape
        y.square().sum().backward()
        assert all(p.grad is not None for p in net.parameters())
    small = build_network("ddpmpp-small", (1, 8, 8))
    assert small.enc.keys() >= {"8x8_conv", "4x4_down", "4x4_block1"}
    assert small.enc["4x4_block0"].attention and not small.enc["8x8_block0"].attention
    assert len(build_network("ddpmpp-small", (3, 32, 32)).enc) == 9  # three levels from 16 px


def test_class_conditional_forward():
    torch.manual_seed(0)
    for name, shape in [("ddpmpp-small", (1, 8, 8)), ("mlp", (2,)), ("ncsnpp", (1, 8, 8))]:
        kwargs = {"model_channels": 16, "num_blocks": 1, "dropout": 0.0} if name == "ncsnpp" else {}
        net = build_network(name, shape, label_dim=10, **kwargs).eval()
        for p in net.parameters():  # leave the near-zero init so the labels show in the output
            p.data.add_(0.1 * torch.randn_like(p))
        x, n, idx = torch.randn(4, *shape), torch.randn(4), torch.tensor([0, 3, 3, 9])
        onehot = F.one_hot(idx, 10).float()
        y = net(x, n, onehot)
        assert y.shape == x.shape
        torch.testing.assert_close(net(x, n, idx), y)  # integer labels are one-hot encoded
        assert not torch.allclose(net(x, n, None), y)  # None = zero label (unconditional)
        with pytest.raises(ValueError, match="class_labels"):
            net(x, n, torch.zeros(4, 3))
        # label_dropout=1 while training drops every label: the unconditional output
        net.label_dropout = 1.0
        torch.testing.assert_close(net.train()(x, n, onehot), net(x, n, None))


def test_unknown_name_lists_valid_names():
    with pytest.raises(plugins.UnknownNameError) as info:
        build_network("unet9000", (3, 32, 32))
    for name in NAMES:
        assert name in str(info.value)


def test_unknown_option_is_named():
    with pytest.raises(TypeError, match="chanel_mult"):
        build_network("ddpmpp-small", (1, 8, 8), chanel_mult=(1, 2))
    with pytest.raises(TypeError, match="img_resolution"):
        build_network("songunet", (1, 8, 8), img_resolution=8)
    with pytest.raises(TypeError, match="width"):
        build_network("mlp", (2,), width=3)
    with pytest.raises(ValueError, match="encoder_type"):
        build_network("songunet", (1, 8, 8), channel_mult=(1, 2), encoder_type="unet")


def test_preset_options_are_overridable():
    net = build_network("ddpmpp", (3, 16, 16), model_channels=16, num_blocks=1, dropout=0.0)
    assert tuple(net.enc["16x16_conv"].weight.shape) == (16, 3, 3, 3)
    assert net.enc["16x16_block0"].dropout == 0.0
    assert count_parameters(build_network("mlp", (3,), hidden=32, num_layers=1)) < 20_000


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="divisible"):
        build_network("ddpmpp", (3, 30, 30))
    with pytest.raises(ValueError, match="divisible"):
        build_network("ddpmpp-small", (1, 6, 6), channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="H == W"):
        build_network("ddpmpp-small", (1, 8, 16))
    with pytest.raises(ValueError, match="vector"):
        build_network("mlp", (1, 8, 8))
    with pytest.raises(ValueError, match="square image"):
        build_network("ddpmpp-small", (2,))


def test_positional_embedding_is_edm_convention():
    x = torch.tensor([0.3, -1.2])
    emb = PositionalEmbedding(8, endpoint=True)(x)
    freqs = torch.tensor([10000.0 ** (-i / 3) for i in range(4)])  # endpoint: last freq 1e-4
    torch.testing.assert_close(
        emb, torch.cat([(x[:, None] * freqs).sin(), (x[:, None] * freqs).cos()], dim=1)
    )


def test_resampling_with_box_filter_is_pooling_and_nearest():
    x = torch.randn(2, 3, 8, 8)
    down = Conv2d(3, 3, 0, down=True, resample_filter=(1, 1))
    up = Conv2d(3, 3, 0, up=True, resample_filter=(1, 1))
    torch.testing.assert_close(down(x), F.avg_pool2d(x, 2))
    torch.testing.assert_close(up(x), F.interpolate(x, scale_factor=2, mode="nearest"))
    assert Conv2d(3, 3, 0, down=True, resample_filter=(1, 3, 3, 1))(x).shape == (2, 3, 4, 4)
    fused = Conv2d(3, 5, 3, down=True, resample_filter=(1, 3, 3, 1), fused_resample=True)
    assert fused(x).shape == (2, 5, 4, 4)


def test_attention_is_softmax_of_scaled_dot_product():
    torch.manual_seed(0)
    block = UNetBlock(8, 8, emb_channels=4, attention=True).eval()
    for p in block.parameters():
        p.data.normal_()
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 4)
    h = block.conv0(F.silu(block.norm0(x)))
    h = block.conv1(F.silu(block.norm1(h + block.affine(emb)[:, :, None, None])))
    h = (h + x) / math.sqrt(2)
    q, k, v = block.qkv(block.norm2(h)).reshape(2, 8, 3, 16).unbind(2)
    a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    expected = (block.proj(a.transpose(1, 2).reshape(2, 8, 4, 4)) + h) / math.sqrt(2)
    torch.testing.assert_close(block(x, emb), expected, rtol=1e-4, atol=1e-4)


def test_forward_mode_jvp_through_the_unet():
    # Continuous-time consistency training differentiates F with torch.func.jvp.
    torch.manual_seed(0)
    net = build_network("ddpmpp-small", (1, 8, 8), model_channels=16).eval()
    x, n = torch.randn(2, 1, 8, 8), torch.randn(2)
    tx, tn = torch.randn_like(x), torch.randn_like(n)
    y, dy = torch.func.jvp(net, (x, n), (tx, tn))
    eps = 1e-3
    fd = (net(x + eps * tx, n + eps * tn) - net(x - eps * tx, n - eps * tn)) / (2 * eps)
    torch.testing.assert_close(dy, fd, rtol=1e-2, atol=1e-4)
