"""The BMXNet architectures have the paper's depths and layouts; bad layouts fail naming the key."""

from __future__ import annotations

import re

import pytest
import torch
from hydra.errors import ConfigCompositionException
from torch import nn

from binexp.binarize.base import BinaryWeights
from binexp.builder import build
from binexp.errors import ConfigError
from binexp.models import build_model
from binexp.models.densenet import DenseBlock, DenseNet, unit_blocks
from binexp.models.resnet import BasicBlock, Bottleneck
from tests.conftest import compose_train


def _ste(arch: str, *extra: str) -> nn.Module:
    cfg = compose_train([f"architecture={arch}", "method=ste", "dataset=synthetic", "architecture.width=0.125", *extra])
    return build_model(cfg.architecture, build(cfg.method), (3, 32, 32), num_classes=10)


def _weight_layers(net: nn.Module) -> list[nn.Module]:
    # a network's depth counts the method's convs and linears; the float 1x1 shortcut projections are not layers
    shortcuts = {id(m) for n, m in net.named_modules() if ".shortcut" in n}
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in shortcuts]


@pytest.mark.parametrize("arch,depth,block,count", [
    ("resnet68_wide", 68, BasicBlock, 33), ("resnet26_bottleneck", 26, Bottleneck, 8), ("resnet34_wide", 34, BasicBlock, 16),
])
def test_resnet_depth_is_its_name(arch, depth, block, count):
    net = _ste(arch)
    assert len(_weight_layers(net)) == depth
    assert sum(isinstance(m, block) for m in net.modules()) == count
    binary = [m for m in _weight_layers(net) if isinstance(m, BinaryWeights)]
    assert len(binary) == depth - 2  # stem and classifier stay float (the paper's setup)


@pytest.mark.parametrize("arch", ["resnet18", "resnet26_bottleneck"])
def test_binary_shortcuts_are_the_methods_strided_1x1_convs_on_the_blocks_signs(arch):
    net = _ste(arch, "architecture.shortcut=binary")
    blocks = [b for b in net.stages if b.shortcut is not None]
    assert len(blocks) == (4 if arch == "resnet26_bottleneck" else 3)
    seen = {}
    for b in blocks:
        assert isinstance(b.shortcut, BinaryWeights) and b.shortcut.kernel_size == (1, 1)
        b.act1.register_forward_hook(lambda m, i, o, b=b: seen.update({("act", id(b)): o}))
        b.shortcut.register_forward_hook(lambda m, i, o, b=b: seen.update({("in", id(b)): i[0]}))
    net.eval()(torch.randn(2, 3, 32, 32))
    for b in blocks:
        assert torch.equal(seen[("in", id(b))], seen[("act", id(b))])  # it reads the +-1 activations
        assert set(seen[("in", id(b))].unique().tolist()) == {-1.0, 1.0}
    float_net = _ste(arch)
    binary_count = sum(isinstance(m, BinaryWeights) for m in net.modules())
    assert binary_count == sum(isinstance(m, BinaryWeights) for m in float_net.modules()) + len(blocks)


@pytest.mark.parametrize("shortcut", ["float", "binary"])
def test_resnets_take_mnists_28x28_images(shortcut):
    """28 -> 14 -> 7 -> 4: a float shortcut's average pool rounds up as the strided conv does."""
    cfg = compose_train(["architecture=resnet18", "method=ste", "dataset=mnist", "architecture.width=0.125",
                         f"architecture.shortcut={shortcut}"])
    net = build_model(cfg.architecture, build(cfg.method), (1, 28, 28), num_classes=10)
    assert net.stages(net.stem(torch.randn(2, 1, 28, 28))).shape == (2, 64, 4, 4)


def test_a_bad_shortcut_names_the_key_and_the_allowed_values():
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(["architecture=resnet18", "architecture.shortcut=bin"])
    text = str(err.value.__cause__)
    assert "architecture.shortcut" in text and "[float, binary]" in text


def test_bottleneck_squeezes_to_a_quarter_and_expands_back():
    net = _ste("resnet26_bottleneck", "architecture.width=1.0")
    first = net.stages[0]
    assert (first.conv1.in_channels, first.conv1.out_channels, first.conv1.kernel_size) == (64, 64, (1, 1))
    assert (first.conv2.out_channels, first.conv2.kernel_size) == (64, (3, 3))
    assert (first.conv3.out_channels, first.conv3.kernel_size) == (256, (1, 1))
    last = net.stages[-1]
    assert (last.conv2.out_channels, last.conv3.out_channels, net.fc.in_features) == (512, 2048, 2048)
    # the 3x3 conv strides: 32x32 -> 4x4 after three downsampling stages
    assert net.stages(net.stem(torch.randn(1, 3, 32, 32))).shape == (1, 2048, 4, 4)


def test_resnet68_wide_has_the_wide_filters():
    net = _ste("resnet68_wide", "architecture.width=1.0")
    widths = sorted({b.conv2.out_channels for b in net.stages})
    assert (net.stem.out_channels, widths) == (64, [128, 256, 512, 1024])


def test_densenet45_lays_out_twenty_blocks_two_four_eight_six():
    net = _ste("densenet45", "architecture.width=1.0")
    units, current = [], 0
    for layer in net.features:
        if isinstance(layer, DenseBlock):
            current += 1
        elif current:
            units.append(current)
            current = 0
    units.append(current)
    assert units == [2, 4, 8, 6]
    assert net.features[0].out_channels == 256  # the stem has 2k filters, k = 128
    assert {b.conv.out_channels for b in net.features if isinstance(b, DenseBlock)} == {128}
    # transitions keep every channel: 256 + 2k + 4k + 8k + 6k = 2816 into the classifier
    assert net.fc.in_features == 2816


def _transition_widths(net: nn.Module) -> list[tuple[int, int]]:
    convs = [m for layer in net.features if not isinstance(layer, DenseBlock) for m in layer.modules() if isinstance(m, nn.Conv2d)]
    return [(c.in_channels, c.out_channels) for c in convs[1:]]  # convs[0] is the stem


@pytest.mark.parametrize("extra,widths,fc_in,params", [
    # BMXNet's released DenseNet-21: transitions keep all channels (Table 2 gives 51MB float for it)
    ((), [(512, 512), (768, 768), (1024, 1024)], 1280, 8_426_762),
    # DenseNet-BC's halving transitions
    (("architecture.reduction=0.5",), [(512, 256), (512, 256), (512, 256)], 512, 3_363_594),
])
def test_densenet21_transitions_keep_the_configured_share_of_channels(extra, widths, fc_in, params):
    net = _ste("densenet21", "architecture.width=1.0", *extra)
    assert _transition_widths(net) == widths
    assert net.fc.in_features == fc_in
    assert sum(p.numel() for p in net.parameters()) == params


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_bad_densenet_reduction_names_the_key_and_the_allowed_range(bad):
    with pytest.raises(ConfigError, match=r"architecture\.reduction=.*allowed is a number in \(0, 1\]"):
        DenseNet(build(compose_train(["method=ste"]).method), (3, 32, 32), 10, reduction=bad)


def test_uniform_blocks_still_mean_blocks_per_unit():
    assert unit_blocks(5) == [5, 5, 5, 5]
    net = _ste("densenet45", "architecture.blocks=5")
    assert sum(isinstance(m, DenseBlock) for m in net.modules()) == 20


@pytest.mark.parametrize("bad", [0, [2, 4, 8], [2, 4, 8, 0], "5", True])
def test_bad_densenet_blocks_name_the_key_and_the_allowed_forms(bad):
    with pytest.raises(ConfigError, match=r"architecture\.blocks=.*allowed are a positive int .* or a list of 4 positive ints"):
        DenseNet(build(compose_train(["method=ste"]).method), (3, 32, 32), 10, blocks=bad)


@pytest.mark.parametrize("ceil,fc1_in", [("true", 64 * 4 * 4), ("false", 64 * 3 * 3)])
def test_cifar_quick_pools_round_up_as_caffe_or_down_as_pytorch(ceil, fc1_in):
    cfg = compose_train(["architecture=cifar_quick", "dataset=synthetic", f"architecture.ceil_pools={ceil}"])
    net = build_model(cfg.architecture, build(cfg.method), (3, 32, 32), num_classes=10)
    assert net.classifier[1].in_features == fc1_in
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def _fp(arch: str, init: str, dataset: str = "cifar10") -> nn.Module:
    torch.manual_seed(0)
    cfg = compose_train([f"architecture={arch}", f"architecture.init={init}", f"dataset={dataset}"])
    shape = (1, 28, 28) if dataset == "mnist" else (3, 32, 32)
    return build_model(cfg.architecture, build(cfg.method), shape, num_classes=10)


def _layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_caffe_init_draws_cifar_quicks_fillers_and_zero_biases():
    net = _fp("cifar_quick", "caffe")
    stds = [layer.weight.std().item() for layer in _layers(net)]
    assert stds == pytest.approx([1e-4, 1e-2, 1e-2, 1e-1, 1e-1], rel=0.06)  # 800 to 51 200 draws per layer
    assert all(layer.bias.abs().max() == 0 for layer in _layers(net))


@pytest.mark.parametrize("init", ["xavier", "kaiming"])
def test_xavier_and_kaiming_init_every_layer_at_its_fan_with_zero_biases(init):
    net = _fp("lenet", init, "mnist")
    for layer in _layers(net):
        fan_out, fan_in = layer.weight.shape[0], layer.weight[0].numel()
        fan_out *= layer.weight[0, 0].numel()
        w = layer.weight.detach()
        if init == "xavier":  # uniform on +-sqrt(6 / (fan_in + fan_out))
            bound = (6 / (fan_in + fan_out)) ** 0.5
            assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
        else:  # normal with std sqrt(2 / fan_in)
            assert w.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)
        assert layer.bias is None or layer.bias.abs().max() == 0


def test_torch_init_leaves_pytorchs_defaults_and_caffe_needs_an_architecture_with_fillers():
    default = _fp("cifar_quick", "torch")
    torch.manual_seed(0)
    plain = [nn.Conv2d(3, 32, 5, padding=2)]  # PyTorch's own first layer from the same seed
    assert torch.equal(_layers(default)[0].weight, plain[0].weight)
    with pytest.raises(ValueError, match="architecture.init=caffe: VGGSmall has no Caffe fillers; use xavier, kaiming or torch"):
        _fp("vgg_small", "caffe")


def _layout(net: nn.Module) -> list[tuple]:
    """The network's layers in order, each as its kind and the numbers that define it."""
    out: list[tuple] = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            out.append(("conv", m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0], m.bias is not None))
        elif isinstance(m, nn.Linear):
            out.append(("fc", m.in_features, m.out_features, m.bias is not None))
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            out.append(("max" if isinstance(m, nn.MaxPool2d) else "avg", m.kernel_size, m.stride))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            out.append(("bn", m.num_features))
        elif isinstance(m, nn.ReLU) or type(m).__name__.endswith("ReLU"):
            out.append(("relu",))
    return out


REFERENCE_NETS = {
    # Caffe's examples/mnist/lenet_train_test.prototxt: 431 080 parameters
    "lenet": ([("conv", 1, 20, 5, 1, 0, True), ("max", 2, 2), ("conv", 20, 50, 5, 1, 0, True), ("max", 2, 2),
               ("fc", 800, 500, True), ("relu",), ("fc", 500, 10, True)], 431_080),
    # Caffe's cifar10_quick_train_test.prototxt (pools round up: 32 -> 16 -> 8 -> 4), plus the ReLU after fc(64)
    "cifar_quick": ([("conv", 3, 32, 5, 1, 2, True), ("max", 3, 2), ("relu",), ("conv", 32, 32, 5, 1, 2, True), ("relu",),
                     ("avg", 3, 2), ("conv", 32, 64, 5, 1, 2, True), ("relu",), ("avg", 3, 2), ("fc", 1024, 64, True),
                     ("relu",), ("fc", 64, 10, True)], 145_578),
    # BinaryNet / SBN: 128C3-128C3-MP2-256C3-256C3-MP2-512C3-512C3-MP2-1024FC-1024FC-10, conv -> [pool] -> BN -> act
    "vgg_small": ([*[layer for c_in, c, pool in [(3, 128, False), (128, 128, True), (128, 256, False), (256, 256, True),
                                                 (256, 512, False), (512, 512, True)]
                     for layer in [("conv", c_in, c, 3, 1, 1, False), *([("max", 2, 2)] if pool else []), ("bn", c), ("relu",)]],
                   ("fc", 8192, 1024, False), ("bn", 1024), ("relu",), ("fc", 1024, 1024, False), ("bn", 1024), ("relu",),
                   ("fc", 1024, 10, True)], 14_029_706),
}


@pytest.mark.parametrize("arch", sorted(REFERENCE_NETS))
def test_reference_nets_have_their_layers_in_order_and_their_parameter_count(arch):
    layout, params = REFERENCE_NETS[arch]
    cfg = compose_train([f"architecture={arch}", "method=fp", "dataset=synthetic"])
    net = build_model(cfg.architecture, build(cfg.method), (1, 28, 28) if arch == "lenet" else (3, 32, 32), 10)
    assert _layout(net) == layout
    assert sum(p.numel() for p in net.parameters()) == params


@pytest.mark.parametrize("arch,base", [("lenet", 1), ("cifar_quick", 1), ("vgg_small", 0.25), ("resnet18", 0.25),
                                       ("resnet26_bottleneck", 0.25), ("densenet21", 0.25), ("densenet45", 0.125)])
def test_width_multiplies_every_hidden_layer_but_not_the_input_or_the_classes(arch, base):
    shape = (1, 28, 28) if arch == "lenet" else (3, 32, 32)

    def layers(width: float) -> list[tuple]:
        cfg = compose_train([f"architecture={arch}", "method=ste", "dataset=synthetic", f"architecture.width={width}"])
        return [layer for layer in _layout(build_model(cfg.architecture, build(cfg.method), shape, 10))
                if layer[0] in ("conv", "fc", "bn")]

    narrow, wide = layers(base), layers(2 * base)
    expected = [(kind, *(2 * n for n in sizes), *rest) for kind, *sizes, rest in
                [(layer[0], *layer[1:3], layer[3:]) if layer[0] != "bn" else (layer[0], layer[1], ()) for layer in narrow]]
    expected[0] = (narrow[0][0], narrow[0][1], *expected[0][2:])  # the first conv reads the image
    expected[-1] = (*expected[-1][:2], 10, *expected[-1][3:])  # the classifier has one output per class
    assert narrow[0][1] == shape[0] and narrow[-1][:1] == ("fc",) and wide == expected


@pytest.mark.parametrize("arch,b", [("densenet13", 1), ("densenet21", 2), ("densenet37", 4), ("densenet69", 8)])
def test_densenets_are_named_8b_plus_5_and_have_4b_plus_5_weight_layers(arch, b):
    net = _ste(arch)
    assert sum(isinstance(m, DenseBlock) for m in net.modules()) == 4 * b
    # stem, one 3x3 conv per block, three transitions, classifier: the paper's block without bottleneck (Fig. 1d)
    assert len(_weight_layers(net)) == 4 * b + 5
    assert arch == f"densenet{8 * b + 5}"


def test_lenet_with_other_than_two_conv_widths_names_the_key():
    from binexp.models.lenet import LeNet

    with pytest.raises(ConfigError, match=r"architecture\.channels=\[20, 50, 70\]: LeNet has two convolutions"):
        LeNet(build(compose_train(["method=fp"]).method), (1, 28, 28), 10, channels=[20, 50, 70])


@pytest.mark.parametrize(("arch", "shape", "cause"), [
    ("lenet", [1, 4, 4], "Kernel size can't be greater than actual input size"),
    ("cifar_quick", [3, 4, 4], "Output size is too small")])
def test_an_image_too_small_for_the_architecture_is_refused_before_training(tmp_path, arch, shape, cause):
    """It was a RuntimeError traceback from inside the first training step."""
    from binexp.train import train

    cfg = compose_train(["dataset=synthetic", "debug=smoke", f"architecture={arch}", f"dataset.image_shape={shape}"],
                        run_dir=tmp_path)
    with pytest.raises(ConfigError, match=rf"^dataset.image_shape={re.escape(str(shape))}: the network of "
                                          rf"architecture={arch} does not take it \(its forward pass: "
                                          rf".*{re.escape(cause)}\); give larger images or another architecture$"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("shape", [[1, 28], [0, 28, 28], [1, 28, 28, 28], []])
def test_an_image_shape_is_three_positive_whole_numbers(shape):
    from binexp.data.synthetic import SyntheticData

    with pytest.raises(ConfigError, match=rf"^dataset.image_shape={re.escape(str(shape))}: allowed is \[channels, "
                                          r"height, width\], whole numbers >= 1$"):
        SyntheticData(image_shape=shape)


def test_a_network_whose_forward_reads_values_is_not_refused_by_the_meta_device_check():
    """A forward that branches on a tensor's value cannot run on the meta device; it was refused as an image that
    does not fit, so the network could not be trained at all."""
    from omegaconf import OmegaConf

    from binexp.binarize.base import Method
    from binexp.models import check_input_fits

    arch = OmegaConf.create({"_target_": "tests.helpers.ValueBranchNet", "name": "branchy"})
    check_input_fits(arch, Method, (1, 8, 8), 10)
    with pytest.raises(ConfigError, match=r"^dataset.image_shape=\[1, 2, 2\]: the network of architecture=branchy does "
                                          r"not take it \(its forward pass: .*Kernel size can't be greater"):
        check_input_fits(arch, Method, (1, 2, 2), 10)
