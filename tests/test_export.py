"""`ceds export` and `ceds info`: ONNX export with its checks, the TensorRT operator check, bad
inputs, ONNX Runtime vs torch masks, the engine sidecar and cache logic, and the TensorRT build
and backend (those skip, with the reason, where TensorRT or a CUDA GPU is missing)."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import GEOMETRIES, random_network, sphere_scan

from ceds_deploy.errors import ArtifactError, BackendUnavailableError, ConfigError

TOLERANCE = 1e-4  # max |diff| of probabilities, fp32


def _tensorrt_missing() -> str | None:
    missing = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("TensorRT is not installed (pip install 'ceds-deploy[tensorrt]')")
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU")
    return "; ".join(missing) or None


TENSORRT_MISSING = _tensorrt_missing()
needs_tensorrt = pytest.mark.skipif(
    TENSORRT_MISSING is not None, reason=f"needs TensorRT and a CUDA GPU: {TENSORRT_MISSING}"
)


def _net(seed: int = 1):
    return random_network(seed)


@pytest.fixture(scope="module")
def bn_checkpoint(tmp_path_factory, tiny_spec) -> Path:
    from ceds_deploy.checkpoint import save_checkpoint

    teacher, student = _net(1), _net(2)
    path = tmp_path_factory.mktemp("ckpt") / "bn.pt"
    save_checkpoint(
        path,
        {
            "spec": tiny_spec.to_dict(),
            "net_config": dataclasses.asdict(teacher.config),
            "teacher": teacher.state_dict(),
            "student": student.state_dict(),
            "epoch": 7,
        },
    )
    return path


@pytest.fixture(scope="module")
def exported(bn_checkpoint, tmp_path_factory):
    """The width-4 teacher exported once (about 40 s on two cores): opset 17, validated."""
    from ceds_deploy.export.onnx_export import export_checkpoint

    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return export_checkpoint(bn_checkpoint, out, weights="teacher", opset=17)


def _torch_reference(checkpoint: Path, weights: str = "teacher"):
    from ceds_deploy.checkpoint import load_network
    from ceds_deploy.network import CedsInference

    net, _ = load_network(checkpoint, weights)
    return CedsInference(net).eval()


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------ export


@pytest.mark.slow
def test_export_writes_a_validated_self_describing_onnx_file(exported, bn_checkpoint, tiny_spec):
    import onnx

    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.checkpoint import sha256_of
    from ceds_deploy.export.onnx_export import EXPORT_META_KEY, VALIDATION_META_KEY

    path = exported.path
    assert path.is_file() and path.stat().st_size == exported.size_bytes
    assert not list(path.parent.glob(".*"))  # no staged or temp files left behind
    spec = read_spec(path)  # metadata round trip
    assert spec == tiny_spec.replace(
        opset=17,
        precision="fp32",
        weights="teacher",
        source_sha256=sha256_of(bn_checkpoint),
        package_version=spec.package_version,
    )
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    meta = {p.key: p.value for p in model.metadata_props}
    tools = json.loads(meta[EXPORT_META_KEY])["tools"]
    assert {"torch", "onnx", "onnxscript", "onnxruntime", "ceds_deploy"} <= set(tools)
    validation = json.loads(meta[VALIDATION_META_KEY])
    assert validation["passed"] and validation["max_prob_diff"] <= TOLERANCE
    assert exported.parity.passed and exported.parity.windows >= 4  # random, phantom and a larger window
    assert len(set(exported.parity.shapes)) == 2


@pytest.mark.slow
def test_graph_has_no_batchnorm_or_dropout_and_only_operators_tensorrt_parses(exported):
    import onnx

    from ceds_deploy.export.operators import SUPPORTED, TENSORRT_PARSER_SOURCE, node_histogram, unsupported_nodes

    # The operator list is TensorRT 10.x's ONNX parser support matrix:
    # onnx/onnx-tensorrt, docs/operators.md (TensorRT 10.15, opsets 9-24).
    assert "onnx-tensorrt" in TENSORRT_PARSER_SOURCE and "operators.md" in TENSORRT_PARSER_SOURCE
    model = onnx.load(str(exported.path))
    histogram = node_histogram(model)
    assert histogram == exported.histogram
    assert "BatchNormalization" not in histogram and "Dropout" not in histogram
    assert exported.folded_batchnorm > 0
    assert set(histogram) <= SUPPORTED
    assert unsupported_nodes(model) == []
    # CBAM's global pooling stays a reduction, never a fixed-kernel MaxPool/AveragePool.
    assert not {"MaxPool", "AveragePool"} & set(histogram)


@pytest.mark.slow
def test_dynamic_batch_and_window_sizes_run_in_onnxruntime(exported, bn_checkpoint):
    import onnxruntime as ort

    reference = _torch_reference(bn_checkpoint)
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 32, 32, 32), (3, 1, 32, 32, 32), (2, 1, 48, 32, 64)]:
        x = rng.uniform(0, 1, shape).astype(np.float32)
        seg, conf = session.run(["seg_logits", "confidence"], {"image": x})
        with torch.no_grad():
            ref_seg, ref_conf = (t.numpy() for t in reference(torch.from_numpy(x)))
        assert seg.shape == (shape[0], 2, *shape[2:]) and conf.shape == (shape[0], 1, *shape[2:])
        assert np.abs(_softmax(seg) - _softmax(ref_seg)).max() <= TOLERANCE, shape
        assert np.abs(conf - ref_conf).max() <= TOLERANCE, shape


def test_fold_batchnorm_keeps_outputs_and_leaves_the_network_alone():
    from ceds_deploy.export.onnx_export import fold_batchnorm
    from ceds_deploy.network import CedsInference

    net = _net(3)
    folded, count = fold_batchnorm(net)
    bn = torch.nn.modules.batchnorm._BatchNorm
    assert count == sum(isinstance(m, bn) for m in net.modules()) > 0
    assert not any(isinstance(m, bn) for m in folded.modules())
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        (a, ca), (b, cb) = CedsInference(net)(x), CedsInference(folded)(x)
    assert torch.allclose(a, b, atol=1e-4) and torch.allclose(ca, cb, atol=1e-5)


def test_opset_outside_the_supported_range_is_refused():
    from ceds_deploy.export.onnx_export import check_opset

    assert check_opset(17) == 17
    for bad in (11, 16, 99):
        with pytest.raises(ConfigError, match=f"got {bad}"):
            check_opset(bad)


def test_operator_check_names_nodes_tensorrt_cannot_parse():
    from onnx import TensorProto, helper

    from ceds_deploy.export.operators import unsupported_nodes

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="fine"),
        helper.make_node("Unique", ["r"], ["u"], name="unique"),
        helper.make_node("ReduceMax", ["r", "axes"], ["m"], name="runtime_axes"),
        helper.make_node("MyOp", ["r"], ["c"], name="custom", domain="com.example"),
        helper.make_node("NotAnOperator", ["r"], ["n"], name="unknown"),
    ]
    graph = helper.make_graph(nodes, "g", [x, axes], [helper.make_tensor_value_info("m", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    found = {n.name: n.reason for n in unsupported_nodes(model)}
    assert set(found) == {"unique", "runtime_axes", "custom", "unknown"}
    assert "axes" in found["runtime_axes"] and "plugin" in found["custom"]


def test_failed_parity_deletes_the_file_and_raises(tmp_path, tiny_spec):
    from ceds_deploy.export import parity

    report = parity.ParityReport(
        label="onnxruntime vs torch",
        windows=2,
        shapes=((32, 32, 32),),
        max_prob_diff=0.3,
        mean_prob_diff=0.01,
        max_confidence_diff=0.0,
        max_logit_diff=2.0,
        dice=0.9,
        tolerance=TOLERANCE,
        min_dice=None,
    )
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"x")
    with pytest.raises(ArtifactError, match=r"model.onnx: parity check failed, file deleted: .*3.00e-01"):
        parity.require_parity(report, artifact, delete=[artifact])
    assert not artifact.exists()
    passing = dataclasses.replace(report, max_prob_diff=1e-6)
    artifact.write_bytes(b"x")
    assert parity.require_parity(passing, artifact, delete=[artifact]) is passing and artifact.exists()
    assert not dataclasses.replace(passing, min_dice=0.99).passed  # Dice 0.9 < 0.99


@pytest.mark.slow
def test_tampered_onnx_file_fails_the_check_against_torch(exported, bn_checkpoint, tmp_path):
    import onnx
    from onnx import numpy_helper

    from ceds_deploy.checkpoint import load_network
    from ceds_deploy.export import parity

    model = onnx.load(str(exported.path))
    weight = next(t for t in model.graph.initializer if len(t.dims) == 5)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    bad = tmp_path / "tampered.onnx"
    onnx.save(model, str(bad))
    net, spec = load_network(bn_checkpoint)
    sets = [parity.WindowSet("random", parity.random_windows(spec.roi_size, 2))]
    report = parity.check_onnx_against_torch(bad, net, spec, sets)
    assert not report.passed
    with pytest.raises(ArtifactError, match="tampered.onnx: parity check failed"):
        parity.require_parity(report, bad, delete=[bad])
    assert not bad.exists()


# ------------------------------------------------------------------ bad inputs


@pytest.mark.slow
def test_corrupt_and_truncated_onnx_files_give_clear_errors(exported, tmp_path, tiny_spec):
    import onnx

    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends.onnxruntime_backend import OnnxRuntimeBackend
    from ceds_deploy.cli.export import export
    from ceds_deploy.cli.info import info

    data = exported.path.read_bytes()
    truncated, garbage, bare = tmp_path / "truncated.onnx", tmp_path / "garbage.onnx", tmp_path / "bare.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    model = onnx.load(str(exported.path))
    del model.metadata_props[:]
    onnx.save(model, str(bare))
    for path in (truncated, garbage):
        for call in (
            lambda p: read_spec(p),
            lambda p: info(p),
            lambda p: export(p, tensorrt=tmp_path / "m.engine", batch="1:2:2"),
            lambda p: OnnxRuntimeBackend(p, tiny_spec).activate(),
        ):
            with pytest.raises(ArtifactError) as err:
                call(path)
            message = str(err.value)
            assert message.startswith(str(path)) and "\n" not in message
    with pytest.raises(ArtifactError, match="bare.onnx: ONNX file has no 'ceds.model_spec' metadata"):
        read_spec(bare)


def test_checkpoints_of_another_architecture_are_refused(tmp_path, tiny_spec):
    from monai.networks.nets import VNet

    from ceds_deploy.checkpoint import save_checkpoint
    from ceds_deploy.export.onnx_export import export_checkpoint
    from ceds_deploy.network import CedsNetConfig

    vnet = tmp_path / "vnet.pt"
    state = VNet(spatial_dims=3, in_channels=1, out_channels=2).state_dict()
    save_checkpoint(
        vnet,
        {
            "spec": tiny_spec.to_dict(),
            "net_config": dataclasses.asdict(CedsNetConfig(width=4)),
            "teacher": state,
            "student": state,
        },
    )
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": state}, plain)
    out = tmp_path / "model.onnx"
    with pytest.raises(ArtifactError, match="vnet.pt: weights do not fit the CEDS network"):
        export_checkpoint(vnet, out)
    with pytest.raises(ArtifactError, match="plain.pt: not a ceds-deploy checkpoint"):
        export_checkpoint(plain, out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["plain.pt", "vnet.pt"]


def _registered_main(command: str):
    from ceds_deploy.cli.app import app, main

    names = {c.name for c in app.registered_commands}
    if command not in names:
        pytest.skip(f"`ceds {command}` is not registered in ceds_deploy.cli.app yet")
    return main


def test_cli_export_errors_are_one_red_line(tmp_path, capsys):
    from typer.testing import CliRunner

    from ceds_deploy.cli.app import app

    main = _registered_main("export")
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {}}, plain)
    assert main(["export", str(plain), "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "plain.pt: not a ceds-deploy checkpoint" in err and "Traceback" not in err
    runner = CliRunner()
    for args, option in (
        ([str(plain)], "--out"),
        ([str(plain), "--out", "m.onnx", "--opset", "12"], "--opset"),
        ([str(plain), "--out", "m.onnx", "--batch", "8:1:1"], "--batch"),
        ([str(plain), "--out", "m.onnx", "--weights", "ema"], "--weights"),
    ):
        result = runner.invoke(app, ["export", *args])
        assert result.exit_code == 2 and option in result.output, args  # usage errors
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------ segment and info


@pytest.mark.slow
def test_segment_with_onnxruntime_reproduces_the_torch_masks(exported, bn_checkpoint, tmp_path):
    from rich.console import Console

    from ceds_deploy.cli.segment import run_segment
    from ceds_deploy.inference import SegmentOptions
    from ceds_deploy.io import read_scan, write_volume
    from ceds_deploy.qa.metrics import dice

    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("axial_lps", "oblique"):
        image, _ = sphere_scan(GEOMETRIES[name], radius_mm=16.0)
        write_volume(scans / f"{name}.nii.gz", image.array, image.geometry)
    options = SegmentOptions(batch_size=2, skip_air=False)
    quiet = Console(file=io.StringIO())
    outputs = {}
    for backend, model in (("torch", bn_checkpoint), ("onnxruntime", exported.path)):
        outputs[backend] = tmp_path / backend
        assert (
            run_segment(
                scans, outputs[backend], model, backend=backend, options=options, console=quiet, show_progress=False
            )
            == 0
        )
    foreground = []
    for name in ("axial_lps", "oblique"):
        masks = [read_scan(outputs[b] / f"{name}.nii.gz", dtype=None).array > 0 for b in ("torch", "onnxruntime")]
        confidence = [read_scan(outputs[b] / f"{name}_confidence.nii.gz").array for b in ("torch", "onnxruntime")]
        assert dice(*masks) >= 0.999, name
        assert np.abs(confidence[0] - confidence[1]).max() <= 1e-3
        foreground.append(float(masks[0].mean()))
    assert 0.01 < min(foreground) and max(foreground) < 0.99  # neither empty nor full: Dice means something
    report = json.loads((outputs["onnxruntime"] / "report.json").read_text(encoding="utf-8"))
    assert report["cases"][0]["backend"].startswith("onnxruntime")


@pytest.mark.slow
def test_info_prints_the_spec_and_export_metadata(exported, bn_checkpoint):
    import typer
    from typer.testing import CliRunner

    from ceds_deploy.checkpoint import sha256_of
    from ceds_deploy.cli.info import info

    app = typer.Typer()
    app.command()(info)
    app.command("other")(lambda: None)  # two commands, so typer keeps the command name
    runner = CliRunner()
    wide = {"COLUMNS": "250"}  # rich sizes its tables from COLUMNS; digests then fit on one line
    result = runner.invoke(app, ["info", str(exported.path)], env=wide)
    assert result.exit_code == 0, result.output
    for text in (
        "roi_size",
        "32, 32, 32",
        "source_sha256",
        sha256_of(bn_checkpoint),
        "opset",
        "ai.onnx 17",
        "onnxscript",
        "onnxruntime vs torch: passed",
        "image (batch, 1, 16*x_blocks",
    ):
        assert text in result.output, text
    result = runner.invoke(app, ["info", str(bn_checkpoint)], env=wide)
    assert result.exit_code == 0 and "teacher, student" in result.output and "epoch" in result.output


# ------------------------------------------------------------------ TensorRT, without TensorRT


def _fake_engine(tmp_path: Path, spec, runtime, profile="1:4:8", name="model.engine") -> Path:
    from ceds_deploy.export.engine_cache import BatchProfile, make_sidecar, write_sidecar

    engine = tmp_path / name
    engine.write_bytes(b"not really an engine")
    write_sidecar(
        engine,
        make_sidecar(
            spec=spec.replace(precision="fp16"),
            runtime=runtime,
            onnx_path=tmp_path / "model.onnx",
            onnx_sha256="ab" * 32,
            profile=BatchProfile.parse(profile),
            build_seconds=12.3,
        ),
    )
    return engine


ORIN = dict(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7")
H100 = dict(tensorrt_version="10.8.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0")


def test_batch_profiles_parse_and_refuse_bad_values():
    from ceds_deploy.export.engine_cache import BatchProfile

    assert BatchProfile.parse("1:4:8") == BatchProfile(1, 4, 8)
    assert BatchProfile.parse("4") == BatchProfile(1, 4, 4)
    assert BatchProfile(1, 2, 4).shapes((32, 32, 48))["max"] == (4, 1, 32, 32, 48)
    for bad in ("8:4:1", "0:1:2", "a:b:c", "1:2"):
        with pytest.raises(ConfigError, match="batch"):
            BatchProfile.parse(bad)


def test_engine_for_another_gpu_or_tensorrt_is_refused_with_the_rebuild_command(tmp_path, tiny_spec):
    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.export.engine_cache import RuntimeInfo, check_sidecar, read_sidecar

    engine = _fake_engine(tmp_path, tiny_spec, RuntimeInfo(**ORIN))
    sidecar = read_sidecar(engine)
    assert read_spec(engine).precision == "fp16"
    assert sidecar["gpu"] == {"name": "Orin", "compute_capability": "8.7"} and sidecar["profile"]["batch"] == "1:4:8"
    assert sidecar["profile"]["max"] == [8, 1, 32, 32, 32] and sidecar["onnx"]["sha256"] == "ab" * 32
    assert sidecar["precision"] == "fp16" and sidecar["strongly_typed"] is True  # the ONNX spec's precision
    check_sidecar(engine, sidecar, RuntimeInfo(**ORIN))  # same machine: fine
    for other in (H100, {**ORIN, "tensorrt_version": "10.4.0"}, {**ORIN, "compute_capability": "8.6"}):
        with pytest.raises(ArtifactError) as err:
            check_sidecar(engine, sidecar, RuntimeInfo(**other))
        message = str(err.value)
        assert "built for TensorRT 10.3.0 on Orin" in message
        assert "ceds export model.onnx --tensorrt model.engine --batch 1:4:8" in message
        assert "--fp16" not in message and "ONNX file's precision, fp16" in message


def test_engine_without_or_with_a_broken_sidecar_is_refused(tmp_path, tiny_spec):
    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends.tensorrt_backend import TensorRTBackend

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ArtifactError, match="model.engine: engine has no sidecar"):
        TensorRTBackend(engine, tiny_spec)
    with pytest.raises(ArtifactError, match="engine has no sidecar"):
        read_spec(engine)
    (tmp_path / "model.engine.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable engine sidecar"):
        TensorRTBackend(engine, tiny_spec)
    (tmp_path / "model.engine.json").write_text('{"spec": ' + json.dumps(tiny_spec.to_dict()) + "}")
    with pytest.raises(ArtifactError, match=r"model\.engine\.json: unreadable engine sidecar \(no 'profile' entry\)"):
        TensorRTBackend(engine, tiny_spec)


def test_engine_cache_keys_separate_what_changes_an_engine(tmp_path, tiny_spec):
    from ceds_deploy.export.engine_cache import BatchProfile, RuntimeInfo, cache_entry, engine_key, lookup

    orin, h100 = RuntimeInfo(**ORIN), RuntimeInfo(**H100)
    profile = BatchProfile(1, 4, 8)
    base = engine_key("ab" * 32, tiny_spec, orin, "fp16", profile)
    others = [
        engine_key("cd" * 32, tiny_spec, orin, "fp16", profile),
        engine_key("ab" * 32, tiny_spec, h100, "fp16", profile),
        engine_key("ab" * 32, tiny_spec, orin, "fp32", profile),
        engine_key("ab" * 32, tiny_spec, orin, "fp16", BatchProfile(1, 2, 2)),
        engine_key("ab" * 32, tiny_spec.replace(roi_size=(48, 48, 32)), orin, "fp16", profile),
    ]
    entries = {cache_entry(tmp_path, tmp_path / "model.onnx", k) for k in [base, *others]}
    assert len(entries) == 6 and all(e.name == "model.engine" for e in entries)
    entry = cache_entry(tmp_path, tmp_path / "model.onnx", base)
    assert entry == cache_entry(
        tmp_path, tmp_path / "model.onnx", engine_key("ab" * 32, tiny_spec, orin, "fp16", profile)
    )
    assert not lookup(entry, base, orin)  # nothing built yet
    entry.parent.mkdir(parents=True)
    _fake_engine(entry.parent, tiny_spec, orin)
    assert lookup(entry, base, orin)
    assert not lookup(entry, base, h100)  # the GPU changed under the cache: rebuild
    assert not lookup(entry, others[0], orin)  # another ONNX file
    assert not lookup(entry, others[2], orin)  # another precision (another ONNX file, in fact)
    sidecar = json.loads((entry.parent / "model.engine.json").read_text(encoding="utf-8"))
    del sidecar["strongly_typed"]  # an engine from before strongly typed builds: rebuilt
    (entry.parent / "model.engine.json").write_text(json.dumps(sidecar))
    assert not lookup(entry, base, orin)


@pytest.mark.skipif(TENSORRT_MISSING is None, reason="TensorRT and a CUDA GPU are present")
def test_tensorrt_commands_fail_in_one_line_without_tensorrt(exported, tmp_path, tiny_spec):
    from ceds_deploy.backends import create_backend
    from ceds_deploy.backends.tensorrt_backend import TensorRTBackend
    from ceds_deploy.cli.export import export
    from ceds_deploy.export.engine_cache import RuntimeInfo
    from ceds_deploy.export.tensorrt_build import build_engine

    engine = _fake_engine(tmp_path, tiny_spec, RuntimeInfo(**ORIN))
    calls = [
        lambda: export(exported.path, tensorrt=tmp_path / "m.engine", batch="1:4:8"),
        lambda: build_engine(exported.path, tmp_path / "m.engine"),
        lambda: TensorRTBackend(exported.path, tiny_spec, engine_for_onnx=lambda *_: engine).activate(),
        lambda: create_backend("tensorrt", engine, tiny_spec, device="cuda").activate(),
    ]
    for call in calls:
        with pytest.raises(BackendUnavailableError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message and "TensorRT cannot run here" in message
        assert "pip install 'ceds-deploy[tensorrt]'" in message or "CUDA GPU" in message
    assert not (tmp_path / "m.engine").exists()
    with pytest.raises(BackendUnavailableError, match="use --device cuda"):
        TensorRTBackend(exported.path, tiny_spec, device="cpu")
    backend = TensorRTBackend(engine, tiny_spec)  # no GPU work before activate(): the sidecar gives the batch
    assert backend.max_batch_size == 8
    with pytest.raises(ConfigError, match="exceeds the engine's profile max 8"):
        TensorRTBackend(engine, tiny_spec, max_batch_size=16)


def test_info_on_an_engine_prints_its_sidecar(tmp_path, tiny_spec, capsys):
    from ceds_deploy.cli.info import info
    from ceds_deploy.export.engine_cache import RuntimeInfo

    engine = _fake_engine(tmp_path, tiny_spec, RuntimeInfo(**ORIN))
    info(engine)
    out = capsys.readouterr().out
    for text in ("tensorrt_version", "10.3.0", "Orin", "1:4:8", "runs here"):
        assert text in out, text


# ------------------------------------------------------------------ TensorRT, on a GPU


@pytest.fixture(scope="module")
def built_engine(exported, tmp_path_factory):
    from ceds_deploy.export.engine_cache import BatchProfile
    from ceds_deploy.export.tensorrt_build import BuildOptions, build_checked_engine

    folder = tmp_path_factory.mktemp("engine")
    options = BuildOptions(batch=BatchProfile(1, 2, 2), workspace_gb=1.0, timing_cache=folder / "timing.cache")
    return build_checked_engine(exported.path, folder / "model.engine", options)


@pytest.mark.gpu
@needs_tensorrt
def test_engine_build_writes_sidecar_timing_cache_and_passes_parity(built_engine, exported, tiny_spec):
    import tensorrt as trt

    from ceds_deploy.checkpoint import sha256_of
    from ceds_deploy.export.engine_cache import BatchProfile, read_sidecar
    from ceds_deploy.export.tensorrt_build import BuildOptions, build_engine

    sidecar = read_sidecar(built_engine.engine)
    assert sidecar["tensorrt_version"] == trt.__version__
    assert sidecar["gpu"]["name"] == torch.cuda.get_device_name()
    assert sidecar["onnx"]["sha256"] == sha256_of(exported.path) and sidecar["profile"]["batch"] == "1:2:2"
    assert sidecar["precision"] == "fp32" and sidecar["strongly_typed"] and sidecar["parity"]["passed"]
    assert built_engine.parity.dice >= 0.99
    assert built_engine.timing_cache.is_file()
    again = build_engine(
        exported.path,
        built_engine.engine.with_name("again.engine"),
        BuildOptions(batch=BatchProfile(1, 2, 2), workspace_gb=1.0, timing_cache=built_engine.timing_cache),
    )
    assert again.timing_cache_loaded_bytes > 0


@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_backend_matches_onnxruntime_with_and_without_cuda_graph(built_engine, exported, tiny_spec):
    from ceds_deploy.backends.onnxruntime_backend import OnnxRuntimeBackend
    from ceds_deploy.backends.tensorrt_backend import TensorRTBackend
    from ceds_deploy.export.parity import random_windows

    x = torch.from_numpy(random_windows(tiny_spec.roi_size, 2, seed=5))
    with OnnxRuntimeBackend(exported.path, tiny_spec, max_batch_size=2) as ort_backend:
        ref = ort_backend(x)
    results = []
    for graph in (False, True):
        with TensorRTBackend(built_engine.engine, tiny_spec, cuda_graph=graph) as backend:
            assert backend.max_batch_size == 2
            full = backend(x)
            full_again = backend(x)  # a replayed graph
            single = backend(x[:1])  # another shape: the plain path
            results.append(full)
            for out in (full, full_again):
                assert out.seg_logits.is_cuda and out.seg_logits.dtype == torch.float32
                assert (out.confidence.cpu() - ref.confidence).abs().max() <= 0.05
            # Another batch size may pick other fp16 kernels: compare probabilities, not logits.
            assert torch.allclose(single.seg_logits.softmax(1), full.seg_logits[:1].softmax(1), atol=0.05)
    assert torch.allclose(results[0].seg_logits.softmax(1), results[1].seg_logits.softmax(1), atol=1e-3)


@pytest.mark.gpu
@needs_tensorrt
def test_onnx_model_builds_into_the_engine_cache_once(exported, tiny_spec, tmp_path):
    from ceds_deploy.backends.tensorrt_backend import TensorRTBackend
    from ceds_deploy.export.engine_cache import get_or_build

    def cached(runtime, profile):
        return get_or_build(exported.path, tiny_spec, runtime, profile=profile, cache_dir=tmp_path)

    with TensorRTBackend(exported.path, tiny_spec, max_batch_size=2, engine_for_onnx=cached) as backend:
        engine = backend.engine_path
        backend(torch.rand(2, 1, *tiny_spec.roi_size))
    stamp = engine.stat().st_mtime_ns
    assert tmp_path in engine.parents
    with TensorRTBackend(exported.path, tiny_spec, max_batch_size=2, engine_for_onnx=cached) as backend:
        assert backend.engine_path == engine
    assert engine.stat().st_mtime_ns == stamp  # reused, not rebuilt


@pytest.mark.gpu
@needs_tensorrt
def test_engine_with_a_mismatched_sidecar_is_refused_on_activation(built_engine, tiny_spec, tmp_path):
    import shutil

    from ceds_deploy.backends.tensorrt_backend import TensorRTBackend

    engine = tmp_path / "model.engine"
    shutil.copy(built_engine.engine, engine)
    sidecar = json.loads(Path(str(built_engine.engine) + ".json").read_text(encoding="utf-8"))
    sidecar["gpu"]["name"] = "Orin"
    Path(str(engine) + ".json").write_text(json.dumps(sidecar))
    with pytest.raises(ArtifactError, match="built for TensorRT .* on Orin.*rebuild it on this machine"):
        TensorRTBackend(engine, tiny_spec).activate()
