"""fp16 decided in the ONNX graph: the mixed-precision export and its parity gate against torch
fp32, the operators and tensor types TensorRT's parser takes, precision in the spec and the CLI,
the supported TensorRT versions (the `tensorrt` extra and `require_tensorrt`), and strongly typed
engines (those tests skip without TensorRT and a CUDA GPU)."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import GEOMETRIES, random_network, sphere_scan

from ceds_deploy.errors import ArtifactError, BackendUnavailableError, ConfigError

ROOT = Path(__file__).resolve().parents[1]
TENSORRT_MISSING = (
    "; ".join(
        m
        for m in (
            "TensorRT is not installed" if importlib.util.find_spec("tensorrt") is None else "",
            "no CUDA GPU" if not torch.cuda.is_available() else "",
        )
        if m
    )
    or None
)
needs_tensorrt = pytest.mark.skipif(
    TENSORRT_MISSING is not None, reason=f"needs TensorRT and a CUDA GPU: {TENSORRT_MISSING}"
)


def _net(seed: int = 1, width: int = 4):
    return random_network(seed, width, batchnorm_affine=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_spec) -> Path:
    from ceds_deploy.checkpoint import save_checkpoint

    net = _net(1)
    path = tmp_path_factory.mktemp("ckpt") / "net.pt"
    save_checkpoint(
        path,
        {
            "spec": tiny_spec.to_dict(),
            "net_config": dataclasses.asdict(net.config),
            "teacher": net.state_dict(),
            "student": net.state_dict(),
        },
    )
    return path


@pytest.fixture(scope="module")
def exports(checkpoint, tmp_path_factory):
    """The width-4 network exported in fp32 and in fp16, both validated (about 80 s on two cores)."""
    from ceds_deploy.export.onnx_export import export_checkpoint

    folder = tmp_path_factory.mktemp("onnx")
    return {
        precision: export_checkpoint(checkpoint, folder / f"model-{precision}.onnx", precision=precision)
        for precision in ("fp32", "fp16")
    }


# ------------------------------------------------------------------ the fp16 graph


@pytest.mark.slow
def test_fp16_export_is_mixed_precision_with_fp32_inputs_and_outputs(exports):
    import onnx
    from onnx import TensorProto

    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.export.onnx_export import VALIDATION_META_KEY
    from ceds_deploy.export.operators import tensor_types
    from ceds_deploy.export.precision import graph_precision

    fp32, fp16 = exports["fp32"], exports["fp16"]
    assert read_spec(fp16.path).precision == "fp16" and read_spec(fp32.path).precision == "fp32"
    assert not list(fp16.path.parent.glob(".*"))  # no staged files left
    model = onnx.load(str(fp16.path))
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT, value.name  # callers do not change
    counts = graph_precision(model)
    assert counts["float16"] > 3 * counts.get("float32", 0)  # the convolutions' weights are fp16
    assert graph_precision(onnx.load(str(fp32.path))) == {
        "float32": sum(graph_precision(onnx.load(str(fp32.path))).values())
    }
    assert fp16.histogram.get("Cast", 0) >= 3 and "Cast" not in fp32.histogram
    assert 0.4 < fp16.size_bytes / fp32.size_bytes < 0.65  # about half
    # fp32 islands: the entropy's softmax and log, and the confidence head, stay fp32.
    kinds = tensor_types(model)
    for node in model.graph.node:
        if node.op_type in ("Softmax", "Log", "ReduceSum", "Sigmoid", "ReduceMax", "ReduceMean"):
            assert {kinds[name] for name in (*node.input[:1], *node.output)} == {"FP32"}, node.name
    convs = [kinds[n.output[0]] for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert convs.count("FP16") > len(convs) // 2
    validation = json.loads({p.key: p.value for p in model.metadata_props}[VALIDATION_META_KEY])
    assert validation["passed"] and validation["argmax_agreement"] >= 0.999 and validation["min_agreement"] == 0.999
    assert validation["max_prob_diff"] <= 5e-2 and validation["max_confidence_diff"] <= 5e-2
    assert "unoptimised: fp16 activations" in validation["label"]  # the gate stores activations in fp16
    assert fp16.parity.windows >= 4 and len(set(fp16.parity.shapes)) == 2  # ROI windows and a larger one


@pytest.mark.slow
def test_both_graphs_use_only_operators_and_types_tensorrt_parses(exports):
    import onnx

    from ceds_deploy.export.operators import (
        PARSER_TYPES,
        SUPPORTED,
        TENSORRT_TYPES_SOURCE,
        node_types,
        unsupported_nodes,
        unsupported_types,
    )

    assert "onnx-tensorrt" in TENSORRT_TYPES_SOURCE and "operators.md" in TENSORRT_TYPES_SOURCE
    seen = {}
    for precision, result in exports.items():
        model = onnx.load(str(result.path))
        used = node_types(model)
        assert set(used) <= SUPPORTED, precision
        assert set(used) <= set(PARSER_TYPES), sorted(set(used) - set(PARSER_TYPES))
        for op, kinds in used.items():
            assert kinds <= set(PARSER_TYPES[op]), (precision, op, kinds)
        assert unsupported_nodes(model) == [] and unsupported_types(model) == []
        seen[precision] = used
    assert "FP16" in seen["fp16"]["Conv"] and "FP16" in seen["fp16"]["ConvTranspose"]
    assert seen["fp32"]["Conv"] == {"FP32"} and "Cast" in seen["fp16"]


def test_type_check_names_a_node_the_parser_would_refuse():
    from onnx import TensorProto, helper

    from ceds_deploy.export.operators import unsupported_types

    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 2, 4, 4, 4])
    w = helper.make_tensor("w", TensorProto.DOUBLE, [2, 2, 1, 1, 1], [1.0, 0.0, 0.0, 1.0])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], name="double_conv"),
        helper.make_node("Cast", ["y"], ["z"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("Softmax", ["z"], ["s"], name="fine", axis=1),
    ]
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("s", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    found = {n.name: n.reason for n in unsupported_types(model)}
    assert set(found) == {"double_conv", "to_float"} and "DOUBLE" in found["double_conv"]


def test_mixed_module_mirrors_the_network_and_keeps_its_weights():
    """In fp32 the export module computes exactly what CedsInference does (so it follows
    CedsNet.forward), and building it leaves the network's own weights fp32."""
    from ceds_deploy.export.precision import mixed_precision_module
    from ceds_deploy.network import CedsInference

    net = _net(3)
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        ref_seg, ref_conf = CedsInference(net)(x)
        for head_fp32 in (True, False):
            seg, conf = mixed_precision_module(net, head_fp32=head_fp32, dtype=torch.float32)(x)
            assert torch.equal(seg, ref_seg) and torch.equal(conf, ref_conf)
    module = mixed_precision_module(net)
    assert (
        module.encoder.in_tr.conv_block.conv.weight.dtype == torch.float16
        if hasattr(module.encoder, "in_tr")
        else next(module.encoder.parameters()).dtype == torch.float16
    )
    assert next(module.cbam.parameters()).dtype == torch.float32  # the head stays fp32
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_argmax_agreement_is_part_of_the_gate(tmp_path):
    from ceds_deploy.export import parity

    gate = parity.gate_for("fp16")
    assert gate == {"tolerance": 5e-2, "min_agreement": 0.999, "ort_optimize": False}
    assert parity.gate_for("fp32") == {"tolerance": 1e-4}
    report = parity.ParityReport(
        label="onnxruntime vs torch",
        windows=3,
        shapes=((32, 32, 32),),
        max_prob_diff=0.01,
        mean_prob_diff=1e-4,
        max_confidence_diff=0.01,
        max_logit_diff=0.1,
        dice=0.999,
        tolerance=5e-2,
        min_dice=None,
        argmax_agreement=0.9985,
        min_agreement=0.999,
    )
    assert not report.passed and "argmax agreement 0.998500 (>= 0.999)" in report.summary()
    assert dataclasses.replace(report, argmax_agreement=0.9995).passed
    artifact = tmp_path / "model-fp16.onnx"
    artifact.write_bytes(b"x")
    with pytest.raises(ArtifactError, match="model-fp16.onnx: parity check failed, file deleted"):
        parity.require_parity(report, artifact, delete=[artifact])
    assert not artifact.exists()


@pytest.mark.slow
def test_fp16_export_that_fails_the_gate_is_refused_and_not_written(tmp_path, tiny_spec, monkeypatch):
    """A deliberately broken fp16 graph (one decoder convolution's weights scaled by 1.5 after the
    cast) must fail the check against torch fp32: ArtifactError, and no file is left."""
    from ceds_deploy.export import parity, precision
    from ceds_deploy.export.onnx_export import export_network

    real = precision.mixed_precision_module

    def broken(net, **kwargs):
        module = real(net, **kwargs)
        conv = [m for m in module.seg_decoder.modules() if isinstance(m, torch.nn.Conv3d)][-1]
        with torch.no_grad():
            conv.weight.mul_(1.5)
        return module

    monkeypatch.setattr(precision, "mixed_precision_module", broken)
    out = tmp_path / "model-fp16.onnx"
    sets = [parity.WindowSet("random", parity.random_windows(tiny_spec.roi_size, 2))]
    with pytest.raises(ArtifactError, match=r"model-fp16.onnx: parity check failed.*argmax agreement"):
        export_network(_net(1), tiny_spec, out, precision="fp16", window_sets=sets)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_segment_runs_the_fp16_onnx_file_with_onnxruntime(exports, tmp_path):
    from rich.console import Console

    from ceds_deploy.cli.segment import run_segment
    from ceds_deploy.inference import SegmentOptions
    from ceds_deploy.io import read_scan, write_volume
    from ceds_deploy.qa.metrics import dice

    scans = tmp_path / "scans"
    scans.mkdir()
    image, _ = sphere_scan(GEOMETRIES["axial_lps"], radius_mm=16.0)
    write_volume(scans / "case.nii.gz", image.array, image.geometry)
    quiet = Console(file=io.StringIO())
    masks, confidence = {}, {}
    for precision, result in exports.items():
        out = tmp_path / precision
        assert (
            run_segment(
                scans,
                out,
                result.path,
                backend="onnxruntime",
                options=SegmentOptions(batch_size=2),
                console=quiet,
                show_progress=False,
            )
            == 0
        )
        masks[precision] = read_scan(out / "case.nii.gz", dtype=None).array > 0
        confidence[precision] = read_scan(out / "case_confidence.nii.gz").array
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        assert report["cases"][0]["backend"].startswith("onnxruntime")
    assert dice(masks["fp32"], masks["fp16"]) >= 0.99
    assert np.abs(confidence["fp32"] - confidence["fp16"]).max() <= 5e-2
    with pytest.raises(ConfigError, match="runs the ONNX file's own precision"):
        run_segment(
            scans,
            tmp_path / "x",
            exports["fp16"].path,
            backend="onnxruntime",
            precision="fp32",
            console=quiet,
            show_progress=False,
        )


# ------------------------------------------------------------------ spec and CLI


def test_spec_precision_is_validated(tiny_spec):
    from ceds_deploy.spec import ModelSpec

    assert tiny_spec.replace(precision="fp16").precision == "fp16"
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16"):
        tiny_spec.replace(precision="int8")
    with pytest.raises(ArtifactError, match="invalid model spec: precision"):
        ModelSpec.from_dict({**tiny_spec.to_dict(), "precision": "fp64"})


def test_cli_refuses_fp16_and_fp32_head_and_bad_precision(tmp_path, checkpoint):
    from typer.testing import CliRunner

    from ceds_deploy.cli.app import app

    runner = CliRunner()
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not read: the option is refused first")
    wide = {"COLUMNS": "400"}
    for args, option in (
        ([str(onnx_file), "--tensorrt", "m.engine", "--fp16"], "--fp16"),
        ([str(onnx_file), "--tensorrt", "m.engine", "--fp32-head"], "--fp32-head"),
        ([str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--precision", "int8"], "--precision"),
    ):
        result = runner.invoke(app, ["export", *args], env=wide)
        assert result.exit_code == 2 and option in result.output, (args, result.output)
    result = runner.invoke(app, ["export", str(onnx_file), "--tensorrt", "m.engine", "--fp16"], env=wide)
    assert "--precision fp16" in " ".join(result.output.split())
    assert not (tmp_path / "m.onnx").exists()


def test_tensorrt_backend_runs_the_files_own_precision(tmp_path, tiny_spec):
    from ceds_deploy.backends.tensorrt_backend import TensorRTBackend
    from ceds_deploy.backends.tensorrt_runtime import BatchProfile, RuntimeInfo
    from ceds_deploy.export.engine_cache import make_sidecar, write_sidecar

    spec = tiny_spec.replace(precision="fp16")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    write_sidecar(
        engine,
        make_sidecar(
            spec=spec,
            runtime=RuntimeInfo("11.1.0", "Orin", "8.7"),
            onnx_path=tmp_path / "model-fp16.onnx",
            onnx_sha256="ab" * 32,
            profile=BatchProfile(1, 2, 4),
            build_seconds=1.0,
        ),
    )
    assert TensorRTBackend(engine, spec, precision="fp16").precision == "fp16"
    assert TensorRTBackend(engine, spec).precision == "fp16"
    with pytest.raises(ConfigError, match="model.engine is fp16: TensorRT engines run the ONNX file's own precision"):
        TensorRTBackend(engine, spec, precision="fp32")


# ------------------------------------------------------------------ supported TensorRT versions


def test_tensorrt_extra_resolves_only_to_supported_majors():
    import tomllib
    from packaging.requirements import Requirement

    from ceds_deploy.backends.tensorrt_runtime import MIN_TENSORRT, SUPPORTED_MAJORS, version_problem

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"][
        "tensorrt"
    ]
    (requirement,) = [Requirement(r) for r in extra]
    assert requirement.name == "tensorrt"
    for version in ("10.0.1", "10.3.0", "10.16.1.11", "11.0.0", "11.5.0"):
        assert requirement.specifier.contains(version), version
        assert version_problem(version) is None, version
    for version in ("8.6.1", "9.3.0.post12", "10.0.0", "12.0.0", "13.1.0"):
        assert not requirement.specifier.contains(version), version
        assert version_problem(version) is not None, version
    assert min(SUPPORTED_MAJORS) == MIN_TENSORRT[0] == 10 and max(SUPPORTED_MAJORS) == 11
    assert requirement.specifier.contains(".".join(map(str, MIN_TENSORRT)))


def test_version_parsing():
    from ceds_deploy.backends.tensorrt_runtime import parse_version

    assert parse_version("10.3.0.26") == (10, 3, 0, 26)
    assert parse_version("11.1.0rc1") == (11, 1, 0)
    assert parse_version("") == () and parse_version("dev") == ()


@pytest.mark.parametrize("version", ["9.3.0", "10.0.0", "12.0.0", "garbage"])
def test_require_tensorrt_names_an_unsupported_version_in_one_line(version, monkeypatch):
    """A stub `tensorrt` module (only its __version__ is read: TensorRT cannot run here)."""
    from ceds_deploy.backends.tensorrt_runtime import require_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))
    with pytest.raises(BackendUnavailableError) as err:
        require_tensorrt("cuda")
    message = str(err.value)
    assert "\n" not in message and message.startswith("TensorRT cannot run here: missing TensorRT 10.0.1 to 11.x")
    assert f"(found {version};" in message and "tensorrt>=10.0.1,<12" in message


@pytest.mark.parametrize("version", ["10.0.1", "10.3.0", "11.1.0"])
def test_require_tensorrt_accepts_a_supported_version(version, monkeypatch):
    from ceds_deploy.backends.tensorrt_runtime import require_tensorrt

    stub = types.SimpleNamespace(__version__=version)
    monkeypatch.setitem(sys.modules, "tensorrt", stub)
    if torch.cuda.is_available():
        assert require_tensorrt("cuda") is stub
    else:
        with pytest.raises(BackendUnavailableError) as err:
            require_tensorrt("cuda")
        assert "found" not in str(err.value) and "a CUDA GPU" in str(err.value)


def test_cli_export_tensorrt_with_an_unsupported_version_is_one_red_line(tmp_path, tiny_spec, monkeypatch, capsys):
    import onnx
    from onnx import TensorProto, helper

    from ceds_deploy.cli.app import main
    from ceds_deploy.spec import ONNX_SPEC_KEY

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 32, 32, 32])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["seg_logits"])],
        "g",
        [x],
        [helper.make_tensor_value_info("seg_logits", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key=ONNX_SPEC_KEY, value=tiny_spec.to_json())
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="12.0.0"))
    assert main(["export", str(path), "--tensorrt", str(tmp_path / "m.engine")]) == 1
    err = capsys.readouterr().err
    assert "TensorRT 10.0.1 to 11.x (found 12.0.0" in " ".join(err.split()) and "Traceback" not in err
    assert "AttributeError" not in err and not (tmp_path / "m.engine").exists()


# ------------------------------------------------------------------ strongly typed engines, on a GPU


@pytest.mark.gpu
@needs_tensorrt
def test_fp16_onnx_builds_a_strongly_typed_fp16_engine_that_matches_onnxruntime(exports, tiny_spec, tmp_path):
    import tensorrt as trt

    from ceds_deploy.backends.tensorrt_backend import TensorRTBackend
    from ceds_deploy.backends.tensorrt_runtime import BatchProfile, read_sidecar
    from ceds_deploy.export.tensorrt_build import BuildOptions, build_checked_engine

    spec = tiny_spec.replace(precision="fp16")
    result = build_checked_engine(
        exports["fp16"].path, tmp_path / "model.engine", BuildOptions(batch=BatchProfile(1, 2, 2), workspace_gb=1.0)
    )
    sidecar = read_sidecar(result.engine)
    assert (
        sidecar["precision"] == "fp16" and sidecar["strongly_typed"] and sidecar["tensorrt_version"] == trt.__version__
    )
    assert result.parity.passed and result.parity.dice >= 0.99
    with TensorRTBackend(result.engine, spec) as backend:
        assert "fp16 (strongly typed)" in backend.description
        out = backend(torch.rand(2, 1, *spec.roi_size))
        assert out.seg_logits.dtype == torch.float32  # fp32 I/O, like the ONNX file


@pytest.mark.gpu
@needs_tensorrt
def test_polygraphy_agrees_where_it_is_installed(exports, tiny_spec):
    """Optional: polygraphy's own ONNX Runtime vs TensorRT comparison of the fp16 file (the same as
    `polygraphy run model-fp16.onnx --onnxrt --trt --strongly-typed ...` in docs/deploy.md)."""
    pytest.importorskip("polygraphy")
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, TrtRunner
    from polygraphy.common import TensorMetadata
    from polygraphy.comparator import Comparator, CompareFunc, DataLoader

    path = str(exports["fp16"].path)
    shape = (2, 1, *tiny_spec.roi_size)
    profile = Profile().add("image", min=shape, opt=shape, max=shape)
    build = EngineFromNetwork(NetworkFromOnnxPath(path, strongly_typed=True), config=CreateConfig(profiles=[profile]))
    loader = DataLoader(
        input_metadata=TensorMetadata().add("image", dtype=np.float32, shape=shape), val_range=(0.0, 1.0)
    )
    results = Comparator.run([OnnxrtRunner(SessionFromOnnx(path)), TrtRunner(build)], data_loader=loader)
    assert bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=5e-2, rtol=5e-2)))
