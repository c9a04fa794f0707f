"""DeepLab-v2 Caffe weights: a caffemodel written with protobuf (runtime-built descriptor of
caffe.proto's fields) and a deeplab-pytorch state dict, loaded into DeepLabV2 and checked against
a reference forward written here with plain torch ops on the Caffe blobs and a BGR, mean-
subtracted input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from wsss_pl.data.augment import IMAGENET_MEAN, IMAGENET_STD
from wsss_pl.errors import WeightsError
from wsss_pl.models import DeepLabV2
from wsss_pl.models.caffe import read_caffemodel

# ResNet-50 depth with DeepLab-v2's ResNet-101 naming (res2a..c, res3a, res3b1.., res4b1..).
BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}
PLANES = {2: 64, 3: 128, 4: 256, 5: 512}
RATES = (6, 12, 18, 24)
NUM_CLASSES = 3
CAFFE_MEAN = (104.008, 116.669, 122.675)


def _caffe_classes():
    """NetParameter / LayerParameter / BlobProto / BlobShape / BatchNormParameter of caffe.proto
    (the field numbers of BVLC caffe.proto) as protobuf message classes."""
    f = descriptor_pb2.FileDescriptorProto(name="caffe_subset.proto", package="caffe")
    T = descriptor_pb2.FieldDescriptorProto
    rep, opt = T.LABEL_REPEATED, T.LABEL_OPTIONAL

    def message(name, fields):
        m = f.message_type.add(name=name)
        for fname, number, label, ftype, type_name in fields:
            field = m.field.add(name=fname, number=number, label=label, type=ftype)
            if type_name:
                field.type_name = ".caffe." + type_name
            if label == rep and ftype in (T.TYPE_FLOAT, T.TYPE_INT64, T.TYPE_DOUBLE):
                field.options.packed = True

    message("BlobShape", [("dim", 1, rep, T.TYPE_INT64, None)])
    message(
        "BlobProto",
        [
            ("shape", 7, opt, T.TYPE_MESSAGE, "BlobShape"),
            ("data", 5, rep, T.TYPE_FLOAT, None),
            ("num", 1, opt, T.TYPE_INT32, None),
            ("channels", 2, opt, T.TYPE_INT32, None),
            ("height", 3, opt, T.TYPE_INT32, None),
            ("width", 4, opt, T.TYPE_INT32, None),
        ],
    )
    message("BatchNormParameter", [("eps", 3, opt, T.TYPE_FLOAT, None)])
    message(
        "LayerParameter",
        [
            ("name", 1, opt, T.TYPE_STRING, None),
            ("type", 2, opt, T.TYPE_STRING, None),
            ("bottom", 3, rep, T.TYPE_STRING, None),
            ("top", 4, rep, T.TYPE_STRING, None),
            ("blobs", 7, rep, T.TYPE_MESSAGE, "BlobProto"),
            ("batch_norm_param", 139, opt, T.TYPE_MESSAGE, "BatchNormParameter"),
        ],
    )
    message(
        "NetParameter",
        [
            ("name", 1, opt, T.TYPE_STRING, None),
            ("layer", 100, rep, T.TYPE_MESSAGE, "LayerParameter"),
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe.NetParameter")),
        pool,
    )


def _block_names(stage: int) -> list[str]:
    count = BLOCKS[stage]
    if stage in (2, 5):  # res2a..c and res5a..c; res3/res4 number their blocks: b1, b2, ...
        return ["a", "b", "c"][:count]
    return ["a"] + [f"b{i}" for i in range(1, count)]


def _caffe_blobs(seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Random DeepLab-v2 blobs by Caffe layer name (conv weights, BN sums + factor, Scale)."""
    rng = np.random.default_rng(seed)
    blobs: dict[str, list[np.ndarray]] = {}

    def conv(name, out_ch, in_ch, k, bias=False):
        std = np.sqrt(2.0 / (in_ch * k * k))
        weight = rng.normal(0, std, (out_ch, in_ch, k, k)).astype(np.float32)
        blobs[name] = [weight] + ([rng.normal(0, 0.1, out_ch).astype(np.float32)] if bias else [])

    def bn(suffix, channels):
        factor = np.float32(rng.uniform(0.5, 999.0))  # Caffe stores sums scaled by this factor
        mean = rng.normal(0, 0.1, channels).astype(np.float32)
        var = rng.uniform(0.5, 1.5, channels).astype(np.float32)
        blobs["bn" + suffix] = [mean * factor, var * factor, np.array([factor], np.float32)]
        blobs["scale" + suffix] = [
            rng.uniform(0.3, 0.7, channels).astype(np.float32),
            rng.normal(0, 0.1, channels).astype(np.float32),
        ]

    conv("conv1", 64, 3, 7)
    bn("_conv1", 64)
    in_ch = 64
    for stage in BLOCKS:
        mid, out = PLANES[stage], PLANES[stage] * 4
        for block in _block_names(stage):
            tag = f"{stage}{block}"
            if block == "a":
                conv(f"res{tag}_branch1", out, in_ch, 1)
                bn(f"{tag}_branch1", out)
            conv(f"res{tag}_branch2a", mid, in_ch, 1)
            bn(f"{tag}_branch2a", mid)
            conv(f"res{tag}_branch2b", mid, mid, 3)
            bn(f"{tag}_branch2b", mid)
            conv(f"res{tag}_branch2c", out, mid, 1)
            bn(f"{tag}_branch2c", out)
            in_ch = out
    for i in range(len(RATES)):
        conv(f"fc1_voc12_c{i}", NUM_CLASSES, 2048, 3, bias=True)
    return blobs


def _set_floats(blob, array):
    """blob.data = array, 100x faster than data.extend: protobuf parses a packed field 5."""
    raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    length, size = bytearray(), len(raw)
    while True:
        length.append((size & 0x7F) | (0x80 if size > 0x7F else 0))
        size >>= 7
        if not size:
            break
    blob.MergeFromString(bytes([5 << 3 | 2]) + bytes(length) + raw)
    assert len(blob.data) == array.size


def _write_caffemodel(path, blobs):
    NetParameter, _ = _caffe_classes()
    net = NetParameter(name="deeplab_test")
    data = net.layer.add(name="data", type="ImageSegData", top=["data", "label"])
    assert not data.blobs
    for name, arrays in blobs.items():
        kind = (
            "BatchNorm"
            if name.startswith("bn")
            else "Scale"
            if name.startswith("scale")
            else "Convolution"
        )
        layer = net.layer.add(name=name, type=kind)
        if kind == "BatchNorm":
            layer.batch_norm_param.eps = 1e-5
        for i, array in enumerate(arrays):
            blob = layer.blobs.add()
            if kind == "BatchNorm" and i == 2 and name == "bn_conv1":
                blob.num, blob.channels, blob.height, blob.width = 1, 1, 1, 1  # legacy 4-d shape
            else:
                blob.shape.dim.extend(array.shape)
            _set_floats(blob, array)
        net.layer.add(name=name.replace("bn", "relu") + "_relu", type="ReLU")
    # The COCO classifier of init.caffemodel (91 classes, 1x1) is not DeepLabV2's.
    coco = net.layer.add(name="fc1_coco", type="Convolution")
    coco_blob = coco.blobs.add()
    coco_blob.shape.dim.extend([91, 2048, 1, 1])
    _set_floats(coco_blob, np.full(91 * 2048, 0.5, np.float32))
    # A layer of an MSC copy with garbage weights: must be ignored.
    copy = net.layer.add(name="res2a_branch2a_res075", type="Convolution")
    copy_blob = copy.blobs.add()
    copy_blob.shape.dim.extend([64, 64, 1, 1])
    _set_floats(copy_blob, np.full(64 * 64, 1e3, np.float32))
    path.write_bytes(net.SerializeToString())


def _reference_forward(blobs, image_uint8):
    """DeepLab-v2 in plain torch ops on the Caffe blobs; image uint8 [B, 3, H, W] RGB."""
    t = {k: [torch.from_numpy(a) for a in v] for k, v in blobs.items()}
    mean = torch.tensor(CAFFE_MEAN).view(1, 3, 1, 1)
    x = image_uint8.flip(1).float() - mean  # BGR 0..255 minus mean

    def bn(x, suffix, relu):
        mean_sum, var_sum, factor = t["bn" + suffix]
        gamma, beta = t["scale" + suffix]
        m, v = mean_sum / factor, var_sum / factor
        y = (x - m.view(1, -1, 1, 1)) / torch.sqrt(v.view(1, -1, 1, 1) + 1e-5)
        y = y * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)
        return F.relu(y) if relu else y

    x = bn(F.conv2d(x, t["conv1"][0], stride=2, padding=3), "_conv1", True)
    x = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
    stride_of = {2: 1, 3: 2, 4: 1, 5: 1}
    dilation_of = {2: 1, 3: 1, 4: 2, 5: 4}
    for stage in BLOCKS:
        for block in _block_names(stage):
            tag = f"{stage}{block}"
            s = stride_of[stage] if block == "a" else 1
            d = dilation_of[stage]
            h = bn(F.conv2d(x, t[f"res{tag}_branch2a"][0], stride=s), f"{tag}_branch2a", True)
            h = F.conv2d(h, t[f"res{tag}_branch2b"][0], padding=d, dilation=d)
            h = bn(h, f"{tag}_branch2b", True)
            h = bn(F.conv2d(h, t[f"res{tag}_branch2c"][0]), f"{tag}_branch2c", False)
            if block == "a":
                short = F.conv2d(x, t[f"res{tag}_branch1"][0], stride=s)
                short = bn(short, f"{tag}_branch1", False)
            else:
                short = x
            x = F.relu(h + short)
    out = 0
    for i, rate in enumerate(RATES):
        weight, bias = t[f"fc1_voc12_c{i}"]
        out = out + F.conv2d(x, weight, bias, padding=rate, dilation=rate)
    return out


def _imagenet_input(image_uint8):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (image_uint8.float() / 255.0 - mean) / std


@pytest.fixture(scope="module")
def blobs():
    return _caffe_blobs()


@pytest.fixture(scope="module")
def image():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (1, 3, 40, 45), generator=generator, dtype=torch.uint8)


def _assert_close(ours, reference):
    assert ours.shape == reference.shape
    scale = reference.abs().max()
    assert scale > 1e-3  # a meaningful output, not all zeros
    assert (ours - reference).abs().max() / scale < 1e-4


def test_caffemodel_forward_equivalence(tmp_path, blobs, image):
    path = tmp_path / "init.caffemodel"
    _write_caffemodel(path, blobs)

    layers = {layer.name: layer for layer in read_caffemodel(path)}
    assert layers["bn_conv1"].blobs[2].shape == (1,)  # legacy num/channels/height/width shape
    assert layers["res4b5_branch2b"].blobs[0].shape == (256, 256, 3, 3)
    assert layers["bn3a_branch1"].bn_eps == pytest.approx(1e-5)
    np.testing.assert_array_equal(layers["res3b1_branch2c"].blobs[0], blobs["res3b1_branch2c"][0])

    model = DeepLabV2(num_classes=NUM_CLASSES, backbone="resnet50", pretrained=str(path)).eval()
    assert model.backbone_style == "caffe" and model.input_convention == "caffe_bgr"
    assert model.backbone.layer2[0].conv1.stride == (2, 2)  # Caffe: stride in branch2a
    assert model.backbone.layer2[0].conv2.stride == (1, 1)
    with torch.no_grad():
        ours = model(_imagenet_input(image))
        reference = _reference_forward(blobs, image)
    assert ours.shape[-2:] == (6, 6)  # height 40 -> 20 -> ceil pool 11 (floor: 10) -> 6 (5)
    _assert_close(ours, reference)

    # The conventions travel in the state dict: a fresh auto model adopts them from it.
    saved = tmp_path / "trained.pt"
    torch.save({"state_dict": {"net." + k: v for k, v in model.state_dict().items()}}, saved)
    again = DeepLabV2(num_classes=NUM_CLASSES, backbone="resnet50", pretrained=str(saved)).eval()
    assert again.backbone_style == "caffe" and again.input_convention == "caffe_bgr"
    with torch.no_grad():
        _assert_close(again(_imagenet_input(image)), reference)

    # A torchvision-style model refuses Caffe weights instead of loading them silently.
    with pytest.raises(WeightsError, match="backbone_style"):
        DeepLabV2(
            num_classes=NUM_CLASSES,
            backbone="resnet50",
            pretrained=str(path),
            backbone_style="torchvision",
        )
    # Plain load_state_dict (Lightning's restore) checks the style and restores the convention.
    plain = DeepLabV2(num_classes=NUM_CLASSES, backbone="resnet50", freeze_bn=False)
    with pytest.raises(RuntimeError, match="backbone style is caffe"):
        plain.load_state_dict(model.state_dict())
    caffe = DeepLabV2(num_classes=NUM_CLASSES, backbone="resnet50", backbone_style="caffe")
    assert caffe.input_convention == "imagenet_rgb"
    caffe.load_state_dict(model.state_dict())
    assert caffe.input_convention == "caffe_bgr"


def _deeplab_pytorch_state(blobs):
    """The state dict deeplab-pytorch's convert.py writes (its layer names), from the blobs."""
    state = {}

    def put(module, caffe_conv, caffe_bn):
        state[module + ".conv.weight"] = torch.from_numpy(blobs[caffe_conv][0])
        mean_sum, var_sum, factor = blobs["bn" + caffe_bn]
        gamma, beta = blobs["scale" + caffe_bn]
        state[module + ".bn.running_mean"] = torch.from_numpy(mean_sum / factor[0])
        state[module + ".bn.running_var"] = torch.from_numpy(var_sum / factor[0])
        state[module + ".bn.weight"] = torch.from_numpy(gamma)
        state[module + ".bn.bias"] = torch.from_numpy(beta)
        state[module + ".bn.num_batches_tracked"] = torch.tensor(0)

    put("layer1.conv1", "conv1", "_conv1")
    parts = {"2a": "reduce", "2b": "conv3x3", "2c": "increase", "1": "shortcut"}
    for stage in BLOCKS:
        for index, block in enumerate(_block_names(stage)):
            tag = f"{stage}{block}"
            for branch, part in parts.items():
                if branch == "1" and block != "a":
                    continue
                put(
                    f"layer{stage}.block{index + 1}.{part}",
                    f"res{tag}_branch{branch}",
                    f"{tag}_branch{branch}",
                )
    for i in range(len(RATES)):
        weight, bias = blobs[f"fc1_voc12_c{i}"]
        state[f"aspp.c{i}.weight"] = torch.from_numpy(weight)
        state[f"aspp.c{i}.bias"] = torch.from_numpy(bias)
    return state


def test_deeplab_pytorch_state_dict(tmp_path, blobs, image):
    # The VOC model (DeepLabV2_ResNet101_MSC: "base." prefix) and the COCO init (DeepLabV1:
    # no prefix, a 91-class 1x1 "fc" that DeepLabV2 does not use).
    msc = {"base." + k: v for k, v in _deeplab_pytorch_state(blobs).items()}
    torch.save(msc, tmp_path / "deeplabv2_resnet101_msc-vocaug.pth")
    model = DeepLabV2(
        num_classes=NUM_CLASSES,
        backbone="resnet50",
        pretrained=str(tmp_path / "deeplabv2_resnet101_msc-vocaug.pth"),
    ).eval()
    assert model.backbone_style == "caffe" and model.input_convention == "caffe_bgr"
    with torch.no_grad():
        _assert_close(model(_imagenet_input(image)), _reference_forward(blobs, image))

    coco = {k: v for k, v in _deeplab_pytorch_state(blobs).items() if not k.startswith("aspp")}
    coco["fc.weight"] = torch.zeros(91, 2048, 1, 1)
    coco["fc.bias"] = torch.zeros(91)
    torch.save(coco, tmp_path / "deeplabv1_resnet101-coco.pth")
    init = DeepLabV2(
        num_classes=NUM_CLASSES,
        backbone="resnet50",
        pretrained=str(tmp_path / "deeplabv1_resnet101-coco.pth"),
    )
    torch.testing.assert_close(
        init.backbone.layer4[2].bn3.running_var,
        torch.from_numpy(blobs["bn5c_branch2c"][1] / blobs["bn5c_branch2c"][2][0]),
    )
    assert init.classifier.convs[0].weight.std() < 0.02  # ASPP left at its N(0, 0.01) init


def test_resnet101_caffe_names_cover_the_model():
    """Every parameter/statistic of a ResNet-101 DeepLabV2 gets exactly one DeepLab-v2 name."""
    from wsss_pl.models.caffe import CaffeLayer, caffe_to_torchvision_keys

    with torch.device("meta"):
        model = DeepLabV2(
            num_classes=21, backbone="resnet101", backbone_style="caffe", freeze_bn=False
        )
    layers = [CaffeLayer("conv1", "Convolution", [np.zeros(1, np.float32)])]
    names = ["_conv1"]
    for stage, count in {2: 3, 3: 4, 4: 23, 5: 3}.items():
        numbered = [f"b{i}" for i in range(1, count)]
        for b in ["a"] + (["b", "c"] if stage in (2, 5) else numbered):
            branches = ["1", "2a", "2b", "2c"] if b == "a" else ["2a", "2b", "2c"]
            for branch in branches:
                layers.append(
                    CaffeLayer(f"res{stage}{b}_branch{branch}", "Convolution", [np.zeros(1)])
                )
                names.append(f"{stage}{b}_branch{branch}")
    for suffix in names:
        factor = np.ones(1, np.float32)
        layers.append(CaffeLayer("bn" + suffix, "BatchNorm", [np.zeros(1), np.zeros(1), factor]))
        layers.append(CaffeLayer("scale" + suffix, "Scale", [np.zeros(1), np.zeros(1)]))
    for i in range(4):
        layers.append(CaffeLayer(f"fc1_voc12_c{i}", "Convolution", [np.zeros(1), np.zeros(1)]))
    state, skipped = caffe_to_torchvision_keys(layers)
    own = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    own -= {"caffe_backbone", "caffe_input"}
    assert not skipped
    assert set(state) == own
    assert "backbone.layer3.22.conv3.weight" in state  # res4b22_branch2c


def test_damaged_caffemodel_is_a_clear_error(tmp_path, blobs):
    path = tmp_path / "init.caffemodel"
    _write_caffemodel(path, {"conv1": blobs["conv1"]})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="init.caffemodel"):
        read_caffemodel(path)
