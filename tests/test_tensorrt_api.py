"""The TensorRT Python API our code calls exists in both supported majors (10.x and 11.x), checked
without TensorRT: every attribute chain on the `trt` module and the methods called on the
builder / network / parser / config / profile / timing-cache / runtime / engine / context objects
are read from our source (AST) and compared with a list of what TensorRT 10.0.1 ... 10.16 and
11.0 ... 11.x all have.

Sources of the list (read for this test, November 2026):
- the Python bindings' source, NVIDIA/TensorRT at tags v10.0.0, v10.1.0, v10.16, v11.0 and v11.1:
  python/src/infer/pyCore.cpp, pyGraph.cpp, pyFoundationalTypes.cpp, python/src/parsers/pyOnnx.cpp
  (https://github.com/NVIDIA/TensorRT/tree/v10.0.0/python/src, .../tree/v11.1/python/src); every
  entry below is bound (`.def`, `.def_property*`, `.value`, `m.attr`) at all five tags;
- "Removed Python APIs and Replacements" (TensorRT 10.x -> 11.x):
  https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html
  and the 11.0.0 release notes (strongly typed networks are the default; STRONGLY_TYPED is kept,
  deprecated and ignored): https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/getting-started/release-notes-11/11.0.0.html
- the Python API reference: https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/index.html
  (10.x: https://docs.nvidia.com/deeplearning/tensorrt/10.16.1/api/ ...).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TENSORRT_MODULES = [
    ROOT / "ceds_deploy" / "backends" / "tensorrt_runtime.py",
    ROOT / "ceds_deploy" / "backends" / "tensorrt_backend.py",
    ROOT / "export" / "tensorrt_build.py",
    ROOT / "export" / "engine_cache.py",
]

# Present in TensorRT 10.0.1 through 10.16 and in 11.0 and 11.1 (see the sources above: each entry
# was looked up in the bindings at v10.0.0, v10.1.0, v10.16, v11.0 and v11.1, e.g.
# `.def("get_tensor_profile_shape", ...)` in the `py::class_<ICudaEngine>(m, "ICudaEngine")` block,
# `.value("STRONGLY_TYPED", ...)  // Deprecated: always enabled` at v11.1).
# "trt.X.Y": an attribute chain on the module; "Class.member": a method or property of an object.
IN_BOTH_MAJORS = frozenset(
    {
        # module level
        "trt.__version__",
        "trt.float32",
        "trt.float16",
        "trt.Builder",
        "trt.Runtime",
        "trt.OnnxParser",
        "trt.ILogger",
        "trt.ILogger.__init__",
        "trt.ILogger.Severity.INTERNAL_ERROR",
        "trt.ILogger.Severity.ERROR",
        "trt.ILogger.Severity.WARNING",
        "trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED",  # 10.x: opt-in; 11.x: kept, ignored, always on
        "trt.MemoryPoolType.WORKSPACE",
        "trt.TensorIOMode.INPUT",
        "trt.TensorIOMode.OUTPUT",
        # IBuilder (python name Builder)
        "Builder.create_network",
        "Builder.create_builder_config",
        "Builder.create_optimization_profile",
        "Builder.build_serialized_network",
        # INetworkDefinition / ITensor
        "INetworkDefinition.num_inputs",
        "INetworkDefinition.num_outputs",
        "INetworkDefinition.get_input",
        "INetworkDefinition.get_output",
        "ITensor.name",
        "ITensor.dtype",
        # OnnxParser
        "OnnxParser.parse_from_file",
        "OnnxParser.num_errors",
        "OnnxParser.get_error",
        # IBuilderConfig, IOptimizationProfile, ITimingCache
        "IBuilderConfig.set_memory_pool_limit",
        "IBuilderConfig.add_optimization_profile",
        "IBuilderConfig.create_timing_cache",
        "IBuilderConfig.set_timing_cache",
        "IBuilderConfig.get_timing_cache",
        "IOptimizationProfile.set_shape",
        "ITimingCache.serialize",
        # Runtime, ICudaEngine, IExecutionContext
        "Runtime.deserialize_cuda_engine",
        "ICudaEngine.num_io_tensors",
        "ICudaEngine.get_tensor_name",
        "ICudaEngine.get_tensor_mode",
        "ICudaEngine.get_tensor_dtype",
        "ICudaEngine.get_tensor_profile_shape",
        "ICudaEngine.create_execution_context",
        "IExecutionContext.set_input_shape",
        "IExecutionContext.set_tensor_address",
        "IExecutionContext.get_tensor_shape",
        "IExecutionContext.execute_async_v3",
    }
)

# Removed in TensorRT 11 (the migration page above; each is bound at v10.0.0 or v10.1.0 and absent
# at v11.0 and v11.1; ILayer.precision / set_output_type are bound at v10.16 as "Deprecated in
# TensorRT 10.12. Superseded by strong typing."). None may appear in our code. (BuilderFlag.DIRECT_IO
# is listed as removed on the 11.0 page but "deprecated, not removed" on the 11.4.1 one.)
REMOVED_IN_11 = frozenset(
    {
        "trt.BuilderFlag.FP16",
        "trt.BuilderFlag.BF16",
        "trt.BuilderFlag.INT8",
        "trt.BuilderFlag.FP8",
        "trt.BuilderFlag.INT4",
        "trt.BuilderFlag.FP4",
        "trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS",
        "trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS",
        "trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH",
        "Builder.platform_has_fast_fp16",
        "Builder.platform_has_fast_int8",
        "ILayer.precision",
        "ILayer.set_output_type",
        "ILayer.reset_precision",
        "IBuilderConfig.int8_calibrator",
    }
)

# How objects are recognised, per function: a variable assigned from a call whose result type we
# know (RETURN_TYPES; `x = trt.Builder(...)`, `network = builder.create_network(...)`, lists built
# from such calls and the loop variables over them), `self.x` assigned that way anywhere in the
# module, and un-annotated parameters with these conventional names.
PARAMETER_TYPES = {
    "builder": "Builder",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "config": "IBuilderConfig",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
}
RETURN_TYPES = {
    "trt.Builder": "Builder",
    "trt.Runtime": "Runtime",
    "trt.OnnxParser": "OnnxParser",
    "Builder.create_network": "INetworkDefinition",
    "Builder.create_builder_config": "IBuilderConfig",
    "Builder.create_optimization_profile": "IOptimizationProfile",
    "INetworkDefinition.get_input": "ITensor",
    "INetworkDefinition.get_output": "ITensor",
    "INetworkDefinition.get_layer": "ILayer",
    "IBuilderConfig.create_timing_cache": "ITimingCache",
    "IBuilderConfig.get_timing_cache": "ITimingCache",
    "Runtime.deserialize_cuda_engine": "ICudaEngine",
    "ICudaEngine.create_execution_context": "IExecutionContext",
}


def _chain(node) -> list[str] | None:
    """['trt', 'ILogger', 'Severity', 'ERROR'] for trt.ILogger.Severity.ERROR; None when the chain
    does not start at a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


class _Types:
    """Types of names in one function (`env`) and of `self.` attributes in the module (`members`)."""

    def __init__(self, env: dict[str, str], members: dict[str, str]) -> None:
        self.env, self.members = env, members

    def of(self, node) -> str | None:
        if isinstance(node, ast.Name):
            return self.env.get(node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            return self.members.get(node.attr)
        if isinstance(node, ast.Call):
            chain = _chain(node.func)
            if chain and chain[0] == "trt":
                return RETURN_TYPES.get(".".join(chain))
            if isinstance(node.func, ast.Attribute):
                owner = self.of(node.func.value)
                return RETURN_TYPES.get(f"{owner}.{node.func.attr}") if owner else None
        if isinstance(node, (ast.ListComp, ast.GeneratorExp)):
            inner = _Types(dict(self.env), self.members)
            inner.bind_comprehensions(node.generators)
            element = inner.of(node.elt)
            return f"list[{element}]" if element else None
        if isinstance(node, (ast.Tuple, ast.List)):
            elements = {self.of(e.value if isinstance(e, ast.Starred) else e) for e in node.elts}
            if len(elements) == 1 and None not in elements:
                element = elements.pop()
                return element if element.startswith("list[") else f"list[{element}]"
        return None

    def bind_comprehensions(self, generators) -> None:
        for gen in generators:
            kind = self.of(gen.iter)
            if isinstance(gen.target, ast.Name) and kind and kind.startswith("list["):
                self.env[gen.target.id] = kind[5:-1]

    def bind(self, scope) -> None:
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                kind, target = self.of(node.value), node.targets[0]
                if kind is None:
                    continue
                if isinstance(target, ast.Name):
                    self.env[target.id] = kind
                elif (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                ):
                    self.members[target.attr] = kind
            elif isinstance(node, (ast.For, ast.comprehension)):
                self.bind_comprehensions([node])  # loop variables (comprehension ones leak: fine here)


def used_tensorrt_api(source: str) -> set[str]:
    """Every `trt.` attribute chain (longest form) and every `Class.member` used on a tracked object."""
    tree = ast.parse(source)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    members: dict[str, str] = {}
    envs = {
        f: _Types(
            {a.arg: PARAMETER_TYPES[a.arg] for a in f.args.args if a.annotation is None and a.arg in PARAMETER_TYPES},
            members,
        )
        for f in functions
    }
    for _ in range(3):  # self.x set in one method and read in another
        for function, types in envs.items():
            types.bind(function)
    innermost = {}
    for function in functions:  # nested functions come later in ast.walk order: they win
        for node in ast.walk(function):
            innermost[node] = envs[function]
    used: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        if isinstance(parents.get(node), ast.Attribute) and parents[node].value is node:
            continue  # only the longest chain, e.g. trt.ILogger.Severity.ERROR, not trt.ILogger
        chain = _chain(node)
        if chain and chain[0] == "trt":
            used.add(".".join(chain))
            continue
        types = innermost.get(node)
        if types is None:
            continue
        inner = node  # obj.member.more: the first member on a tracked object
        while isinstance(inner.value, ast.Attribute) and types.of(inner.value) is None:
            inner = inner.value
        owner = types.of(inner.value)
        if owner and not owner.startswith("list["):
            used.add(f"{owner}.{inner.attr}")
    return used


def _used_in(path: Path) -> set[str]:
    return used_tensorrt_api(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", TENSORRT_MODULES, ids=lambda p: p.name)
def test_every_tensorrt_call_exists_in_tensorrt_10_and_11(path):
    used = _used_in(path)
    assert not used & REMOVED_IN_11, f"{path.name} uses APIs TensorRT 11 removed: {sorted(used & REMOVED_IN_11)}"
    unknown = sorted(used - IN_BOTH_MAJORS)
    assert not unknown, (
        f"{path.name} uses TensorRT API not checked against both majors: {unknown}; read the "
        "10.x and 11.x Python API references and add it to IN_BOTH_MAJORS only if both have it"
    )


def test_the_scan_sees_the_build_and_run_calls():
    """The scan must really track the objects; otherwise the test above passes vacuously."""
    used = set().union(*(_used_in(p) for p in TENSORRT_MODULES))
    for expected in (
        "trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED",
        "Builder.create_network",
        "Builder.build_serialized_network",
        "OnnxParser.parse_from_file",
        "ITimingCache.serialize",
        "IBuilderConfig.set_memory_pool_limit",
        "ITensor.dtype",
        "Runtime.deserialize_cuda_engine",
        "ICudaEngine.get_tensor_profile_shape",
        "IExecutionContext.execute_async_v3",
    ):
        assert expected in used, expected
    assert len(used) >= 40


def test_the_scan_catches_weakly_typed_calls():
    planted = (
        "def build(trt, builder, network):  # a 10.x-era weakly typed build\n"
        "    config = builder.create_builder_config()\n"
        "    config.set_flag(trt.BuilderFlag.FP16)\n"
        "    layer = network.get_layer(0)\n"
        "    layer.precision = trt.float32\n"
        "    layer.set_output_type(0, trt.float32)\n"
    )
    used = used_tensorrt_api(planted)
    assert {"trt.BuilderFlag.FP16", "ILayer.precision", "ILayer.set_output_type"} <= used & REMOVED_IN_11
    assert "IBuilderConfig.set_flag" in used - IN_BOTH_MAJORS


def test_no_weakly_typed_builder_api_is_left_in_the_package():
    """No code (docstrings and messages may explain what is gone) names the weakly typed API."""
    names = set()
    for path in TENSORRT_MODULES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.arg, ast.keyword)):
                names.add(getattr(node, "name", None) or getattr(node, "arg", None))
    for gone in (
        "BuilderFlag",
        "OBEY_PRECISION_CONSTRAINTS",
        "set_output_type",
        "precision_constraints",
        "keep_head_fp32",
        "fp32_head",
        "fp16",
        "set_flag",
    ):
        assert gone not in names, gone
