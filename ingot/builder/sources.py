"""Resolve `ingot build SOURCE` into a model ready to export.

SOURCE is one of: a Hugging Face model folder (config.json + safetensors), a `.gguf` file,
an `.onnx` file, or `module:function` (a factory returning a ModelSpec). Anything else gets
one clear line saying what was expected.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path

from ingot.builder.errors import SourceError, first_line
from ingot.builder.loaded import LoadedModel
from ingot.builder.spec import DimSpec, ModelSpec
from ingot.plans import SourceInfo
from ingot.plans.files import sha256_file

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_GENERIC_FACTORY_NAMES = {"model", "build", "load", "make", "create", "get_model"}
_FACTORY = re.compile(r"^(?P<module>[^:]+):(?P<func>[A-Za-z_]\w*)$")


def load_source(source: str, name: str | None = None) -> LoadedModel:
    path = Path(source).expanduser()
    if path.is_dir() and (path / "manifest.json").is_file():
        from ingot.builder.bundle_source import load_bundle

        loaded = load_bundle(path)
    elif path.is_dir():
        from ingot.builder.hf import load_hf_folder

        loaded = load_hf_folder(path)
    elif path.is_file():
        loaded = _load_file(path)
    elif m := _FACTORY.match(source):
        loaded = _load_factory(m["module"], m["func"], source)
    elif _HUB_ID.match(source):
        raise SourceError(
            f"{source!r} looks like a Hugging Face hub id; ingot builds offline: "
            "download the model and pass its local folder (config.json + *.safetensors)"
        )
    else:
        raise SourceError(
            f"source not found: {source} (expected a model folder, a .gguf or .onnx file, or module:function)"
        )
    if name:
        loaded.model_id = name
    return loaded


def _load_file(path: Path) -> LoadedModel:
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        from ingot.builder.hf import load_gguf

        return load_gguf(path)
    if suffix == ".onnx":
        return _load_onnx(path)
    raise SourceError(
        f"unsupported source file type {suffix or '(none)'!r}: {path} "
        "(expected a .gguf or .onnx file, a Hugging Face model folder, or module:function)"
    )


def _load_onnx(path: Path) -> LoadedModel:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises DecodeError, ValidationError, OSError ...
        raise SourceError(f"cannot read ONNX file {path}: {first_line(e)}") from e
    dims: dict[str, dict[int, DimSpec]] = {}
    for inp in model.graph.input:
        for axis, d in enumerate(inp.type.tensor_type.shape.dim):
            if not d.HasField("dim_value"):
                dims.setdefault(inp.name, {})[axis] = DimSpec(d.dim_param or f"{inp.name}_{axis}")
    return LoadedModel(
        model_id=path.stem,
        kind="generic",
        source=SourceInfo(type="onnx", name=path.name, sha256=sha256_file(path)),
        example={},
        dims=dims,
        output_names=[o.name for o in model.graph.output],
        onnx_path=path,
    )


def _load_factory(module_name: str, func_name: str, source: str) -> LoadedModel:
    module = _import_factory_module(module_name, source)
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise SourceError(f"{source}: module {module_name!r} has no function {func_name!r}")
    try:
        spec = ModelSpec.coerce(factory())
    except TypeError as e:
        raise SourceError(f"{source}: {e}") from e
    except Exception as e:
        raise SourceError(f"{source}: the factory raised {type(e).__name__}: {first_line(e)}") from e
    spec.module.eval()
    return LoadedModel(
        model_id=Path(module_name).stem.rsplit(".", 1)[-1] if func_name in _GENERIC_FACTORY_NAMES else func_name,
        kind=spec.kind,
        source=SourceInfo(type="factory", name=_portable(module_name, func_name), sha256=_factory_hash(module, spec)),
        example=dict(spec.inputs),
        dims=spec.dims(),
        output_names=spec.output_names or _probe_output_names(spec),
        module=spec.module,
    )


def _import_factory_module(module_name: str, source: str):
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise SourceError(f"source not found: {path} (from {source})")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        if "" not in sys.path:
            sys.path.insert(0, "")  # like `python -m`: the current folder is importable
        return importlib.import_module(module_name)
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"cannot import {module_name!r} for {source}: {type(e).__name__}: {first_line(e)}") from e


def _portable(module_name: str, func_name: str) -> str:
    """`pkg.mod:fn` as given; a file path by its name only, so manifests do not depend on where a build ran."""
    if module_name.endswith(".py") or "/" in module_name:
        module_name = Path(module_name).name
    return f"{module_name}:{func_name}"


def _factory_hash(module, spec: ModelSpec) -> str:
    """Identity of a factory model: its code and its weights."""
    h = hashlib.sha256()
    if getattr(module, "__file__", None):
        h.update(Path(module.__file__).read_bytes())
    for name, tensor in sorted(spec.module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _probe_output_names(spec: ModelSpec) -> list[str]:
    import torch
    from torch.utils._pytree import tree_flatten

    with torch.no_grad():
        out = spec.module(**spec.inputs)
    if isinstance(out, dict) and all(isinstance(v, torch.Tensor) for v in out.values()):
        return list(out)
    leaves, _ = tree_flatten(out)
    return ["output"] if len(leaves) == 1 else [f"output_{i}" for i in range(len(leaves))]
