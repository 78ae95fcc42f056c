"""The compact Mask R-CNN of the `el-defect` pipeline: torchvision's Mask R-CNN with a small backbone.

Built from scratch (no pretrained weights) for 300x300 EL cells:
  * backbone: 5 stages of 3x3 convolutions with batch norm (16-24-48-96-128 channels, strides 2-32),
    one input channel (the cell is grayscale);
  * FPN with 64 channels over strides 4, 8, 16, 32 (plus the max-pooled level for the RPN);
  * RPN with 3 aspect ratios (cracks are long and thin), 300/150 proposals in training and 100/50 in
    inference instead of torchvision's 2000/1000;
  * box head: two 256-wide fully connected layers; mask head: two 64-channel convs, 28x28 logits.

`ExportWrapper` is what goes into ONNX: the network up to the raw 28x28 mask probabilities, boxes in
the pixels of the 300x300 input. torchvision's in-graph mask paste (a Loop over detections) is left
out; the service pastes masks itself.
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


def build_model(num_classes: int = 4) -> MaskRCNN:
    """`num_classes` counts the background (0) too."""
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
    return model


class ExportWrapper(nn.Module):
    """One normalised cell [1, 3, 300, 300] (the service's tensors have three channels; a gray cell
    has three equal ones, and they are averaged) -> boxes [n, 4] (x1, y1, x2, y2 in input pixels),
    labels [n] (1-based classes, as f32 so every output is one type), scores [n], masks
    [n, 1, 28, 28] (probabilities)."""

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
        return d["boxes"], d["labels"].to(torch.float32), d["scores"], d["masks"]


def _image_list(images: torch.Tensor):
    from torchvision.models.detection.image_list import ImageList

    return ImageList(images, [(SIZE, SIZE)] * images.shape[0])
