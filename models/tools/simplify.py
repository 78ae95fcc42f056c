"""Graph clean-up for converted detectors: onnxsim's static-shape constant folding (which also folds the
explicit Pad nodes of a TF conversion into their Conv / MaxPool pads), then a symbolic batch dimension."""
import numpy as np
import onnx
from onnx import numpy_helper


def _fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    assert ok, "onnxsim could not validate the simplified model"
    return simplified


def _make_batch_symbolic(model: onnx.ModelProto) -> None:
    g = model.graph
    for vi in list(g.input) + list(g.output):
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    del g.value_info[:]
    inits = {i.name: i for i in g.initializer}
    made = {}
    for node in g.node:
        if node.op_type != "Reshape":
            continue
        shape_init = inits.get(node.input[1])
        if shape_init is None:
            raise ValueError(f"Reshape {node.name} has a computed shape; fold constants first")
        if shape_init.name in made:
            node.input[1] = made[shape_init.name]
            continue
        shape = numpy_helper.to_array(shape_init).copy()
        if shape[0] != 1:
            raise ValueError(f"Reshape {node.name} target {shape} does not start with the batch dim")
        shape[0] = 0  # 0 = copy the input's batch dimension
        new = numpy_helper.from_array(shape.astype(np.int64), name=shape_init.name + "_batch")
        g.initializer.append(new)
        made[shape_init.name] = new.name
        node.input[1] = new.name


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    g = model.graph
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def count_ops(model: onnx.ModelProto) -> dict:
    from collections import Counter

    return dict(Counter(n.op_type for n in model.graph.node))


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    print(f"before: {count_ops(model)}")
    model = _fold_constants(model)
    _make_batch_symbolic(model)
    _drop_unused_initializers(model)
    onnx.checker.check_model(model)
    print(f"after: {count_ops(model)}")
    return model
