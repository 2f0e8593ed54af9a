"""
gfl_d2.onnx_graph: the input normalisation's division folded into the first
convolution (the same outputs in ONNX Runtime, one node fewer), and only
where that is exact; the op counts of a graph.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from gfl_d2.onnx_graph import fold_input_scale, op_counts, runtime_op_counts


def normalised_conv(path, divisor_shape=(1, 3, 1, 1), group=1, second_reader=False):
    """images -> Sub(mean) -> Div(std) -> Conv 3x3 (zero padding) [-> Div's output also out]."""
    g = np.random.default_rng(0)
    std = np.array([57.4, 57.1, 58.4], np.float32).reshape(divisor_shape)
    weight = g.standard_normal((6, 3 // group, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["mean"], value=numpy_helper.from_array(
            np.array([103.5, 116.3, 123.7], np.float32).reshape(1, 3, 1, 1))),
        helper.make_node("Constant", [], ["std"], value=numpy_helper.from_array(std)),
        helper.make_node("Sub", ["images", "mean"], ["centred"], name="sub"),
        helper.make_node("Div", ["centred", "std"], ["normalised"], name="div"),
        helper.make_node("Conv", ["normalised", "w"], ["y"], name="conv", pads=[1, 1, 1, 1],
                         group=group),
    ]  # fmt: skip
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if second_reader:
        outputs.append(helper.make_tensor_value_info("normalised", TensorProto.FLOAT, None))
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 20])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def run(path, x):
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"images": x})


def test_the_division_folds_into_the_convolution(tmp_path):
    path = normalised_conv(str(tmp_path / "m.onnx"))
    x = np.random.default_rng(1).uniform(0, 255, (1, 3, 16, 20)).astype(np.float32)
    want = run(path, x)[0]
    assert fold_input_scale(path)
    assert op_counts(path) == {"Constant": 1, "Sub": 1, "Conv": 1}  # the divisor went too
    # exact in real numbers; in float32 the weights are rounded once more: outputs ~10
    np.testing.assert_allclose(run(path, x)[0], want, rtol=1e-5, atol=1e-4)
    assert not fold_input_scale(path)  # nothing left to fold


@pytest.mark.parametrize(
    "settings",
    [
        dict(group=3),  # a grouped conv's input channels are not its weights' axis 1
        dict(second_reader=True),  # the normalised image is also read elsewhere
        dict(divisor_shape=(3, 1, 1, 1)),  # not one value per channel of the input
    ],
)
def test_nothing_folds_where_it_would_not_be_exact(tmp_path, settings):
    path = normalised_conv(str(tmp_path / "m.onnx"), **settings)
    assert not fold_input_scale(path)
    assert op_counts(path)["Div"] == 1


def test_runtime_op_counts_are_those_of_the_optimised_graph(tmp_path):
    path = normalised_conv(str(tmp_path / "m.onnx"))
    written = op_counts(path)
    ran = runtime_op_counts(path, str(tmp_path / "m.opt.onnx"))
    assert written["Constant"] == 2 and "Constant" not in ran  # constants become initializers
