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


def build_model(num_classes: int = 4) -> MaskRCNN:
    """`num_classes` counts the background (0) too. The returned model has `cell_head` too."""
    backbone = TinyBackbone()
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
    return model


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
    convs = [
        (n, m) for n, m in model.backbone.named_modules() if isinstance(m, nn.Sequential) and len(m) == 3 and isinstance(m[0], nn.Conv2d)
    ]
    if len(folded) != len(convs):
        raise ValueError(f"{onnx_path}: {len(folded)} folded convolutions, the backbone has {len(convs)}")
    for (name, _), (weight, bias) in zip(convs, folded):
        prefix = f"backbone.{name}"
        if tuple(state[f"{prefix}.0.weight"].shape) != weight.shape:
            raise ValueError(f"{onnx_path}: {prefix} has shape {weight.shape}")
        state[f"{prefix}.0.weight"] = torch.from_numpy(weight.copy())
        bn = f"{prefix}.1"
        state[f"{bn}.weight"] = torch.ones_like(state[f"{bn}.weight"])
        state[f"{bn}.bias"] = torch.from_numpy(bias.copy())
        state[f"{bn}.running_mean"] = torch.zeros_like(state[f"{bn}.running_mean"])
        eps = model.backbone.get_submodule(f"{name}.1").eps
        state[f"{bn}.running_var"] = torch.full_like(state[f"{bn}.running_var"], 1.0 - eps)
        loaded.update(f"{bn}.{k}" for k in ["weight", "bias", "running_mean", "running_var"])
        loaded.add(f"{prefix}.0.weight")
    model.load_state_dict(state)
    return [k for k in state if k not in loaded and not k.endswith("num_batches_tracked")]


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
