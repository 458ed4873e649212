"""Checkpoint -> self-describing ONNX file, validated against PyTorch before it appears on disk.

The graph: input `image` (batch, 1, X, Y, Z), outputs `seg_logits` (batch, 2, X, Y, Z) and
`confidence` (batch, 1, X, Y, Z); batch and the spatial axes are dynamic (spatial axes as
multiples of 16). It comes from PyTorch's torch.export-based exporter (`dynamo=True`): the
legacy TorchScript exporter turns CBAM's global max-pool into a fixed-kernel MaxPool (one
window size only) and leaves BatchNorm after transposed convolutions unfolded.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ceds_deploy.errors import ArtifactError, ConfigError
from ceds_deploy.export.operators import TENSORRT_OPSET_RANGE, node_histogram, unsupported_nodes, unsupported_types
from ceds_deploy.export.precision import graph_precision
from ceds_deploy.spec import INPUT_NAME, ONNX_SPEC_KEY, OUTPUT_NAMES, ModelSpec

log = logging.getLogger(__name__)
EXPORT_META_KEY = "ceds.export"  # exporter and tool versions, dynamic axes, folding
VALIDATION_META_KEY = "ceds.validation"  # the parity report the file passed
DEFAULT_OPSET = 17  # TensorRT >= 8.5 and every JetPack 5/6 parse it
EXPORTER_OPSET = 18  # what the dynamo exporter emits natively; 17 is converted here
MIN_OPSET = 17
MAX_BATCH = 256  # upper bounds torch.export needs for its symbolic axes
MAX_BLOCKS = 64  # spatial axes up to 64 * 16 = 1024 voxels
SIZE_MULTIPLE = 16


@dataclass
class ExportResult:
    path: Path
    spec: ModelSpec
    size_bytes: int
    seconds: dict[str, float]
    histogram: dict[str, int]
    folded_batchnorm: int
    parity: object | None = None  # ParityReport
    metadata: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------ BatchNorm folding


def fold_batchnorm(net):
    """A copy of `net` (eval mode) with every BatchNorm folded into the convolution before it.

    Done in PyTorch, not left to the exporter's optimiser, so the graph does not depend on the
    onnxscript version. Covers the two places MONAI's V-Net puts BatchNorm: a `Convolution`
    block (conv, then ADN with the norm first) and Down/UpTransition's bn1(down_conv/up_conv(x)).
    Raises if any BatchNorm is left, so a changed block layout fails here instead of in TensorRT.
    """
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(net).eval()
    count = 0
    for module in list(folded.modules()):
        adn, conv = getattr(module, "adn", None), getattr(module, "conv", None)
        if (
            isinstance(conv, _ConvNd)
            and isinstance(getattr(adn, "N", None), _BatchNorm)
            and next(iter(adn._modules)) == "N"
        ):
            module.conv = fuse_conv_bn_eval(conv, adn.N, transpose=isinstance(conv, _ConvTransposeNd))
            adn.N = nn.Identity()
            count += 1
        for conv_name in ("down_conv", "up_conv"):
            conv, bn = getattr(module, conv_name, None), getattr(module, "bn1", None)
            if isinstance(conv, _ConvNd) and isinstance(bn, _BatchNorm):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, _ConvTransposeNd)))
                module.bn1 = nn.Identity()
                count += 1
    left = [name for name, m in folded.named_modules() if isinstance(m, _BatchNorm)]
    if left:
        raise RuntimeError(f"BatchNorm layers with no convolution to fold into: {left[:3]}")
    return folded, count


# ------------------------------------------------------------------ graph


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's INFO/WARNING chatter (missing torchvision ops etc.) for this call
    only, restoring the loggers' levels afterwards."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_graph(module, roi: tuple[int, int, int], opset: int):
    """torch.export + ONNX translation of `module` (CedsInference) with dynamic axes."""
    import torch
    from torch.export import Dim

    batch = Dim("batch", min=1, max=MAX_BATCH)
    blocks = [Dim(f"{axis}_blocks", min=1, max=MAX_BLOCKS) for axis in "xyz"]
    axes = {0: batch, **{2 + i: SIZE_MULTIPLE * d for i, d in enumerate(blocks)}}
    # Batch 2, not 1: torch.export specialises a size-1 axis to a constant.
    example = torch.rand(2, 1, *roi)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=(axes,),
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    return program.model_proto


def downgrade_opset(model, opset: int):
    """Convert the exporter's opset-18 graph to an older opset with ONNX's version converter.

    Two converter gaps are worked around: an axes initializer shared by several Reduce nodes is
    consumed by the first one it converts (each node gets its own copy first), and ReduceMean/Max
    keep a `noop_with_empty_axes` attribute their pre-18 versions do not have (0 is the old
    behaviour, so dropping it changes nothing).
    """
    import onnx
    from onnx import version_converter

    model = copy.deepcopy(model)
    initializers = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for node in model.graph.node:
        if not node.op_type.startswith("Reduce"):
            continue
        for k, name in enumerate(node.input):
            if name in initializers and uses[name] > 1:
                copy_ = copy.deepcopy(initializers[name])
                copy_.name = f"{name}__{node.name or k}_{k}"
                model.graph.initializer.append(copy_)
                node.input[k] = copy_.name
    converted = version_converter.convert_version(model, opset)
    for node in converted.graph.node:
        if node.op_type.startswith("Reduce") and node.op_type != "ReduceSum":
            for attr in [a for a in node.attribute if a.name == "noop_with_empty_axes"]:
                if attr.i:
                    raise ArtifactError(f"{node.name}: cannot express noop_with_empty_axes=1 in opset {opset}")
                node.attribute.remove(attr)
    used = {name for node in converted.graph.node for name in node.input}
    kept = [t for t in converted.graph.initializer if t.name in used]
    del converted.graph.initializer[:]
    converted.graph.initializer.extend(kept)
    onnx.checker.check_model(converted)
    return converted


def check_graph(model, path: Path, precision: str = "fp32") -> dict[str, int]:
    """The node-type histogram; raises if the graph is not what a deployment needs."""
    histogram = node_histogram(model)
    float_types = graph_precision(model)
    expected = {"fp32": {"float32"}, "fp16": {"float16", "float32"}}[precision]
    if not set(float_types) <= expected or (precision == "fp16" and "float16" not in float_types):
        raise ArtifactError(f"{path}: {precision} export has initializers of types {float_types}; not written")
    for op in ("BatchNormalization", "Dropout"):
        if histogram.get(op):
            raise ArtifactError(f"{path}: exported graph still has {histogram[op]} {op} nodes; not written")
    bad = unsupported_nodes(model)
    if bad:
        raise ArtifactError(f"{path}: {len(bad)} nodes TensorRT cannot parse, e.g. {bad[0]}; not written")
    bad_types = unsupported_types(model)
    if bad_types:
        raise ArtifactError(
            f"{path}: {len(bad_types)} nodes use types TensorRT's parser does not take for them, "
            f"e.g. {bad_types[0]}; not written"
        )
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
        raise ArtifactError(
            f"{path}: graph has inputs {inputs} and outputs {outputs}, expected [{INPUT_NAME}] and {list(OUTPUT_NAMES)}"
        )
    from onnx import TensorProto

    not_fp32 = [
        v.name for v in (*model.graph.input, *model.graph.output) if v.type.tensor_type.elem_type != TensorProto.FLOAT
    ]
    if not_fp32:
        raise ArtifactError(f"{path}: inputs and outputs must be float32 in every precision, {not_fp32} are not")
    return histogram


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxscript
    import torch

    from ceds_deploy import __version__

    versions = {
        "ceds_deploy": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
    }
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions


def set_metadata(model, entries: dict[str, str]) -> None:
    """Set (replace) metadata_props entries."""
    keep = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value


def check_opset(opset: int) -> int:
    import onnx

    high = min(onnx.defs.onnx_opset_version(), TENSORRT_OPSET_RANGE[1])
    if not MIN_OPSET <= opset <= high:
        raise ConfigError(
            f"opset must be between {MIN_OPSET} and {high} (what this onnx and TensorRT's "
            f"ONNX parser both support), got {opset}"
        )
    return opset


# ------------------------------------------------------------------ export


def export_network(
    net,
    spec: ModelSpec,
    out: Path,
    *,
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    validate: bool = True,
    window_sets=None,
    log=None,
) -> ExportResult:
    """Export an in-memory CedsNet (eval mode) with `spec` to `out`, validated before it is written.

    `precision`: "fp32", or "fp16" for a mixed-precision graph (`export/precision.py`) whose parity
    gate against torch fp32 is the fp16 one (probabilities and confidence within 5e-2, argmax
    agreement >= 0.999). `window_sets` overrides the parity windows (default:
    `parity.parity_windows(spec)`); `log(message)` receives progress lines.
    """
    import onnx

    from ceds_deploy import __version__
    from ceds_deploy.export import parity
    from ceds_deploy.export.precision import check_precision, mixed_precision_module
    from ceds_deploy.io import write_atomic_bytes
    from ceds_deploy.network import CedsInference

    say = log or (lambda message: None)
    out = Path(out)
    check_opset(opset)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"ONNX output must end in .onnx, got {out.name}")
    check_precision(precision)
    spec = spec.replace(opset=opset, precision=precision, package_version=__version__)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    folded, n_folded = fold_batchnorm(net)
    module = mixed_precision_module(folded) if precision == "fp16" else CedsInference(folded).eval()
    model = _export_graph(module, spec.roi_size, max(opset, EXPORTER_OPSET))
    if opset < EXPORTER_OPSET:
        model = downgrade_opset(model, opset)
    histogram = check_graph(model, out, precision)
    model.producer_name, model.producer_version = "ceds-deploy", spec.package_version
    model.doc_string = (
        "CEDS mediastinal tumour segmentation. image (batch, 1, X, Y, Z) in [0, 1] after the "
        "pre-processing in ceds.model_spec; seg_logits (batch, 2, ...), confidence (batch, 1, ...) "
        "= P(segmentation right). X, Y, Z: multiples of 16."
    )
    export_info = {
        "exporter": "torch.onnx.export(dynamo=True)",
        "tools": tool_versions(),
        "dynamic_axes": {
            "batch": [1, MAX_BATCH],
            "spatial_multiple_of": SIZE_MULTIPLE,
            "spatial_max": MAX_BLOCKS * SIZE_MULTIPLE,
        },
        "batchnorm_folded": n_folded,
        "exporter_opset": EXPORTER_OPSET,
        "precision": precision,
        "initializer_types": graph_precision(model),
    }
    set_metadata(model, {ONNX_SPEC_KEY: spec.to_json(), EXPORT_META_KEY: json.dumps(export_info, sort_keys=True)})
    onnx.checker.check_model(model, full_check=True)
    seconds["export"] = time.perf_counter() - start
    say(
        f"exported opset {opset} {precision} graph in {seconds['export']:.1f} s ({n_folded} BatchNorm folded, "
        f"{sum(histogram.values())} nodes)"
    )

    report = None
    _remove_leftovers_of(out)
    if validate:
        # Validate a staged copy next to `out`; only a file that passed is moved into place.
        staged = out.with_name(f".{out.name}.{uuid.uuid4().hex}.validating")
        try:
            write_atomic_bytes(staged, model.SerializeToString())
            start = time.perf_counter()
            sets = window_sets if window_sets is not None else parity.parity_windows(spec)
            report = parity.check_onnx_against_torch(staged, net, spec, sets, **parity.gate_for(precision))
            seconds["validate"] = time.perf_counter() - start
            say(report.summary())
            parity.require_parity(report, out, delete=[staged])
        finally:
            staged.unlink(missing_ok=True)
        set_metadata(model, {VALIDATION_META_KEY: json.dumps(report.to_dict(), sort_keys=True)})
    data = model.SerializeToString()
    write_atomic_bytes(out, data)
    metadata = {p.key: p.value for p in model.metadata_props}
    return ExportResult(out, spec, len(data), seconds, histogram, n_folded, report, metadata)


def export_checkpoint(
    checkpoint: Path,
    out: Path,
    *,
    weights: str = "teacher",
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    validate: bool = True,
    window_sets=None,
    log=None,
) -> ExportResult:
    """`ceds export CHECKPOINT --out model.onnx`: the teacher or student network of a checkpoint."""
    from ceds_deploy.checkpoint import load_network, sha256_of

    checkpoint = Path(checkpoint)
    net, spec = load_network(checkpoint, weights)
    spec = spec.replace(weights=weights, source_sha256=sha256_of(checkpoint))
    if Path(out).resolve() == checkpoint.resolve():
        raise ConfigError(f"--out {out} would overwrite the checkpoint")
    return export_network(
        net, spec, Path(out), opset=opset, precision=precision, validate=validate, window_sets=window_sets, log=log
    )


def _remove_leftovers_of(out: Path) -> None:
    """The temp files an export of `out` killed mid-way left behind (its own names only, so exports
    of other files in the folder are never touched)."""
    import re

    from ceds_deploy.io import remove_leftovers

    name = re.escape(out.name)
    removed = remove_leftovers(out.parent, (rf"\.{name}\.[0-9a-f]{{32}}\.(tmp|validating)", rf"\.\.{name}\..+\.tmp"))
    if removed:
        log.info("%s: removed %d leftover temp file(s) of an earlier export", out.parent, len(removed))
