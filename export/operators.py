"""Which ONNX operators TensorRT's ONNX parser accepts, and which nodes of a model it would not.

Source: onnx/onnx-tensorrt, docs/operators.md, "TensorRT 10.15 supports operators in the
inclusive range of opset 9 to opset 24" (the support matrix of the TensorRT 10.x parser,
https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md). Operators marked "Y" there
are in SUPPORTED; those marked "N" are in UNSUPPORTED. Restrictions that matter for a graph like
ours are checked in `unsupported_nodes` (Reduce* axes must be initializers, Conv/Pool must be 2D
or 3D).

The element types the parser takes per operator (`PARSER_TYPES`, for the operators our two graphs
use, fp32 and fp16) come from the same table's "Supported Types" column as of the ONNX-TensorRT
10.1 GA release (onnx/onnx-tensorrt commit 96e7811, docs/operators.md); TensorRT 11.0 to 11.5's
parser release notes add operators (Swish, TRT_* custom ops, opset 25, Squeeze without axes) and
remove none of these. `unsupported_types` checks a graph's inferred tensor types against it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

TENSORRT_PARSER_SOURCE = (
    "onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15, opsets 9-24): "
    "https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md"
)
TENSORRT_OPSET_RANGE = (9, 24)  # TensorRT 10.0 itself: 9-20

SUPPORTED: frozenset[str] = frozenset(
    """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape
Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum
Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If
ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence
RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu Tile
TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split()
)

UNSUPPORTED: frozenset[str] = frozenset(
    """
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad
Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger
MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional
OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt
SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap
SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit
TfIdfVectorizer Unique
""".split()
)

TENSORRT_TYPES_SOURCE = (
    "onnx/onnx-tensorrt docs/operators.md, Supported Types column, ONNX-TensorRT 10.1 GA "
    "(commit 96e7811): https://github.com/onnx/onnx-tensorrt/blob/96e7811/docs/operators.md"
)
_FLOAT = ("FP32", "FP16", "BF16")
_NUMERIC = (*_FLOAT, "INT32", "INT64")
_ANY = (*_NUMERIC, "BOOL")
# The operators of our fp32 and fp16 graphs (and a few neighbours), with the types the parser takes.
PARSER_TYPES: dict[str, tuple[str, ...]] = {
    "Add": _NUMERIC,
    "Cast": (*_NUMERIC, "UINT8", "BOOL"),
    "Concat": _ANY,
    "Constant": _ANY,
    "Conv": _FLOAT,
    "ConvTranspose": _FLOAT,
    "Div": _NUMERIC,
    "Elu": _FLOAT,
    "Exp": _FLOAT,
    "Expand": _ANY,
    "Identity": _ANY,
    "Log": _FLOAT,
    "Mul": _NUMERIC,
    "Neg": _NUMERIC,
    "ReduceMax": _NUMERIC,
    "ReduceMean": _NUMERIC,
    "ReduceSum": _NUMERIC,
    "Relu": _NUMERIC,
    "Reshape": _ANY,
    "Shape": _ANY,
    "Sigmoid": _FLOAT,
    "Slice": _ANY,
    "Softmax": _FLOAT,
    "Sub": _NUMERIC,
    "Tile": _ANY,
    "Transpose": _ANY,
    "Unsqueeze": _ANY,
}
# ONNX TensorProto element type -> the table's names.
ONNX_TYPE_NAMES = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    6: "INT32",
    7: "INT64",
    9: "BOOL",
    10: "FP16",
    11: "DOUBLE",
    16: "BF16",
}

_AXES_INPUT_OPS = frozenset(op for op in SUPPORTED if op.startswith("Reduce"))
_SPATIAL_OPS = frozenset({"Conv", "ConvTranspose", "AveragePool", "MaxPool"})


@dataclass(frozen=True)
class UnsupportedNode:
    name: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op_type} node {self.name!r}: {self.reason}"


def node_histogram(model) -> dict[str, int]:
    """Node count per operator type of the main graph, most frequent first."""
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def _kernel_rank(node, initializers: dict) -> int | None:
    for attr in node.attribute:
        if attr.name == "kernel_shape":
            return len(attr.ints)
    weight = (
        initializers.get(node.input[1]) if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 else None
    )
    return len(weight.dims) - 2 if weight is not None else None


def unsupported_nodes(model) -> list[UnsupportedNode]:
    """Nodes of `model` (an onnx.ModelProto) that TensorRT's ONNX parser would reject."""
    initializers = {t.name: t for t in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    found: list[UnsupportedNode] = []
    for node in model.graph.node:
        op, name = node.op_type, node.name or "(unnamed)"
        if node.domain not in ("", "ai.onnx"):
            found.append(UnsupportedNode(name, op, f"custom domain {node.domain!r} needs a TensorRT plugin"))
        elif op in UNSUPPORTED:
            found.append(UnsupportedNode(name, op, "not supported by the TensorRT ONNX parser"))
        elif op not in SUPPORTED:
            found.append(UnsupportedNode(name, op, "not in the TensorRT ONNX parser's support matrix"))
        elif (
            op in _AXES_INPUT_OPS
            and len(node.input) > 1
            and node.input[1]
            and node.input[1] not in initializers
            and node.input[1] not in constants
        ):
            found.append(UnsupportedNode(name, op, "`axes` must be an initializer"))
        elif op in _SPATIAL_OPS and _kernel_rank(node, initializers) not in (None, 2, 3):
            found.append(UnsupportedNode(name, op, "TensorRT supports 2D or 3D convolutions and pooling only"))
    return found


def tensor_types(model) -> dict[str, str]:
    """Every named tensor of the main graph -> its element type name ("FP32", "FP16", "INT64", ...),
    from the graph's inputs, outputs, initializers, Constant nodes and ONNX shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    graph = inferred.graph
    types: dict[str, str] = {}
    for info in (*graph.input, *graph.output, *graph.value_info):
        if info.type.HasField("tensor_type"):
            types[info.name] = ONNX_TYPE_NAMES.get(
                info.type.tensor_type.elem_type, str(info.type.tensor_type.elem_type)
            )
    for tensor in graph.initializer:
        types[tensor.name] = ONNX_TYPE_NAMES.get(tensor.data_type, str(tensor.data_type))
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = ONNX_TYPE_NAMES.get(attr.t.data_type, str(attr.t.data_type))
    return types


def node_types(model) -> dict[str, set[str]]:
    """Operator -> the element types of its data tensors (first input and outputs) in `model`."""
    types = tensor_types(model)
    used: dict[str, set[str]] = {}
    for node in model.graph.node:
        names = [n for n in (node.input[:1] if node.op_type != "Constant" else []) if n] + [n for n in node.output if n]
        used.setdefault(node.op_type, set()).update(types[n] for n in names if n in types)
    return used


def unsupported_types(model) -> list[UnsupportedNode]:
    """Nodes whose data tensors have a type the parser's table does not list for the operator
    (only for the operators in PARSER_TYPES; others are left to `unsupported_nodes`)."""
    types = tensor_types(model)
    found: list[UnsupportedNode] = []
    for node in model.graph.node:
        allowed = PARSER_TYPES.get(node.op_type)
        if allowed is None:
            continue
        names = ([] if node.op_type == "Constant" else [n for n in node.input[:1] if n]) + [n for n in node.output if n]
        bad = sorted({types[n] for n in names if n in types and types[n] not in allowed})
        if bad:
            found.append(
                UnsupportedNode(
                    node.name or "(unnamed)",
                    node.op_type,
                    f"type {', '.join(bad)} not supported (parser takes {', '.join(allowed)})",
                )
            )
    return found
