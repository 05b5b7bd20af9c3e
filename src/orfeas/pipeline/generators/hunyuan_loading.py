"""Hunyuan3D-2 built from a checkpoint file without random initialisation: hy3dgen's `from_single_file`, lighter.

hy3dgen's `from_single_file` builds every module in float32 and initialises it randomly, reads the whole checkpoint
into memory, copies it in and only then casts to the target dtype, so loading peaks at the float32 model plus the
checkpoint and spends its time on initialisation. `pipeline_from_file` and `vae_from_file` build the same objects
from the same config keys, but the modules' parameters are created on the meta device (no storage, no
initialisation) while their buffers and the plain tensors some modules compute in `__init__` (the VAE's Fourier
frequencies, the multi-view encoder's view embeddings) are computed as usual; the checkpoint is then read tensor by
tensor (a safetensors file with plain reads, a .ckpt memory-mapped), each cast to the target dtype and assigned in
place of its meta parameter. Loading peaks near the final model's size, and what it costs beyond reading the file
is the dtype conversion.

Semantics kept from hy3dgen: the checkpoint's keys are split on their first dot into model, vae and conditioner;
every module loads strictly (a mismatch raises `CheckpointMismatch`, naming the file and the component); a
conditioner absent from the checkpoint keeps the weights its constructor gives it; floating-point tensors end in
the target dtype and the rest keep the module's.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

TensorReader = Callable[["torch.dtype"], "torch.Tensor"]
"""Reads one checkpoint tensor when called, converted to the dtype it is given."""
LazyStateDict = Mapping[str, TensorReader]
"""A state dict whose tensors are read from the file only when called."""

COMPONENTS = ("model", "vae", "conditioner")
"""The checkpoint's key prefixes, as hy3dgen splits them."""
_SHOWN_KEYS = 5


class CheckpointMismatch(RuntimeError):
    """The checkpoint's tensors do not match the modules the config builds (keys or shapes)."""


_state = threading.local()
_patch_lock = threading.Lock()
_patch_users = 0
_original_register: Callable[..., None] | None = None


def _register_parameter_on_meta(original: Callable[..., None]) -> Callable[..., None]:
    """`nn.Module.register_parameter` that moves the parameter to the meta device in a thread that asked for it."""

    @functools.wraps(original)
    def register(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original(module, name, param)
        if param is None or not getattr(_state, "empty", False) or param.is_meta:
            return
        registered = module._parameters[name]
        assert registered is not None
        extras = dict(registered.__dict__)
        extras["requires_grad"] = registered.requires_grad
        module._parameters[name] = type(registered)(registered.to("meta"), **extras)

    return register


@contextlib.contextmanager
def empty_parameters() -> Iterator[None]:
    """Modules built in this thread inside the block get meta parameters; buffers and other threads are untouched.

    Parameters are registered as they are assigned, before the module's `reset_parameters`, so the random
    initialisation runs on meta tensors and costs nothing; a parameter built from a tensor (`Parameter(torch.ones
    (n))`) is computed once and dropped.
    """
    import torch

    global _patch_users, _original_register
    with _patch_lock:
        if _patch_users == 0:
            _original_register = torch.nn.Module.register_parameter
            patched = _register_parameter_on_meta(_original_register)
            torch.nn.Module.register_parameter = patched  # type: ignore[method-assign]
        _patch_users += 1
    previous = getattr(_state, "empty", False)
    _state.empty = True
    try:
        yield
    finally:
        _state.empty = previous
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                assert _original_register is not None
                torch.nn.Module.register_parameter = _original_register  # type: ignore[method-assign]


def checkpoint_path(ckpt_path: str, use_safetensors: bool | None) -> str:
    """The file hy3dgen would read: with safetensors, ".ckpt" in the path becomes ".safetensors"; it must exist."""
    if use_safetensors:
        ckpt_path = ckpt_path.replace(".ckpt", ".safetensors")
    if not os.path.exists(ckpt_path):
        raise FileNotFoundError(f"Model file {ckpt_path} not found")
    return ckpt_path


@contextlib.contextmanager
def open_checkpoint(path: str, use_safetensors: bool | None) -> Iterator[dict[str, TensorReader]]:
    """The checkpoint's tensors by key, each read when called: safetensors with plain reads, a .ckpt through
    `torch.load(weights_only=True, mmap=True)`, whose values are nested state dicts (flattened to "name.key")."""
    import torch

    if use_safetensors:
        with open(path, "rb") as file:
            reader = SafetensorsReader(file)
            yield {key: functools.partial(reader.read, key) for key in reader.index}
        return

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:  # a checkpoint in torch's legacy format cannot be memory-mapped
        if "mmap" not in str(exc):
            raise
        state = torch.load(path, map_location="cpu", weights_only=True)
    yield {key: functools.partial(_converted, value) for key, value in _flatten(state).items()}


def _converted(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype)


_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}  # fmt: skip


def _safetensors_index(file: io.BufferedReader) -> dict[str, tuple[int, int, torch.dtype, tuple[int, ...]]]:
    """Each tensor's (offset, size in bytes, dtype, shape) in a safetensors file, from its JSON header.

    The file is read with plain reads rather than memory-mapped (as safetensors does): pages of a mapping stay in
    the process's resident set while it is open, which would add the whole file to the loading peak.
    """
    import torch

    try:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
        header.pop("__metadata__", None)
        entries = {
            key: (*entry["data_offsets"], getattr(torch, _SAFETENSORS_DTYPES[entry["dtype"]]), tuple(entry["shape"]))
            for key, entry in header.items()
        }
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointMismatch(f"{file.name} is not a safetensors file ({exc!r})") from None
    index = {}
    for key, (begin, end, dtype, shape) in entries.items():
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointMismatch(f"{file.name}: {key} holds {end - begin} bytes, not a {dtype} {shape}")
        index[key] = (8 + length + begin, end - begin, dtype, shape)
    return index


class SafetensorsReader:
    """A safetensors file's tensors, each read on demand into memory of its own in the dtype asked for.

    A tensor stored in another dtype is read into one scratch buffer, reused from tensor to tensor, and converted
    from there: short-lived buffers of every size would otherwise be left between the kept tensors, and the
    allocator would keep that memory after loading.
    """

    def __init__(self, file: io.BufferedReader) -> None:
        import torch

        self.file = file
        self.index = _safetensors_index(file)
        self.scratch = torch.empty(0, dtype=torch.uint8)

    def read(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        """The tensor `key` (little-endian in the file, as the format stores it) as a new `dtype` tensor."""
        import torch

        offset, size, stored, shape = self.index[key]
        if stored == dtype:
            tensor = torch.empty(shape, dtype=dtype)
            self._read_into(tensor.view(-1).view(torch.uint8), offset, size)
            return tensor
        if self.scratch.numel() < size:
            self.scratch = torch.empty(0, dtype=torch.uint8)  # release the smaller one first
            self.scratch = torch.empty(size, dtype=torch.uint8)
        raw = self.scratch[:size]
        self._read_into(raw, offset, size)
        return raw.view(stored).reshape(shape).to(dtype)

    def _read_into(self, target: torch.Tensor, offset: int, size: int) -> None:
        self.file.seek(offset)
        if size and self.file.readinto(target.numpy().data) != size:
            raise CheckpointMismatch(f"{self.file.name} ends inside a tensor")


def _flatten(state: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested state dict as one with dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def split_components(tensors: LazyStateDict) -> dict[str, dict[str, TensorReader]]:
    """The checkpoint's keys grouped by their first dotted part, without it (hy3dgen's split)."""
    groups: dict[str, dict[str, TensorReader]] = {}
    for key, read in tensors.items():
        name = key.split(".")[0]
        groups.setdefault(name, {})[key[len(name) + 1 :]] = read
    return groups


def _listed(keys: set[str]) -> str:
    shown = ", ".join(sorted(keys)[:_SHOWN_KEYS])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > _SHOWN_KEYS else ''})"


def load_weights(
    module: torch.nn.Module,
    tensors: LazyStateDict,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    source: str = "checkpoint",
) -> None:
    """Put the checkpoint's tensors in `module` (strictly), floating-point ones cast to `dtype`, tensor by tensor.

    CheckpointMismatch, naming `source`, when keys are missing or unexpected or a shape differs.
    """
    expected = module.state_dict(keep_vars=True)
    missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or unexpected:
        raise CheckpointMismatch(
            f"{source} does not match the config's modules: missing keys {_listed(missing)}, "
            f"unexpected keys {_listed(unexpected)}"
        )
    loaded = {}
    for key, target in expected.items():
        tensor = tensors[key](dtype if target.is_floating_point() else target.dtype)
        if tensor.shape != target.shape:
            raise CheckpointMismatch(
                f"{source}: {key} has shape {tuple(tensor.shape)} in the file, {tuple(target.shape)} in the config"
            )
        loaded[key] = tensor.to(device)
        del tensor
    module.load_state_dict(loaded, strict=True, assign=True)
    left = [name for name, value in (*module.named_parameters(), *module.named_buffers()) if value.is_meta]
    if left:
        raise CheckpointMismatch(f"{source} left {_listed(set(left))} without values")


def _read_config(config_path: str) -> dict[str, Any]:
    import yaml

    with open(config_path) as file:
        config: dict[str, Any] = yaml.safe_load(file)
    return config


def pipeline_from_file(
    pipeline_class: type,
    ckpt_path: str,
    config_path: str,
    device: str = "cuda",
    dtype: torch.dtype | None = None,
    use_safetensors: bool | None = None,
    **kwargs: Any,
) -> Any:
    """`pipeline_class.from_single_file(ckpt_path, config_path, device, dtype, use_safetensors, **kwargs)` with the
    modules built without initialisation and the weights read tensor by tensor (hy3dgen's dtype default: float16)."""
    import torch
    from hy3dgen.shapegen.pipelines import instantiate_from_config

    dtype = torch.float16 if dtype is None else dtype
    config = _read_config(config_path)
    path = checkpoint_path(ckpt_path, use_safetensors)
    components: dict[str, Any] = {}
    with open_checkpoint(path, use_safetensors) as tensors:
        groups = split_components(tensors)
        for name in COMPONENTS:
            if name == "conditioner" and name not in groups:  # hy3dgen keeps the conditioner's own weights
                components[name] = instantiate_from_config(config[name])
                continue
            with empty_parameters():
                module = instantiate_from_config(config[name])
            load_weights(module, groups.get(name, {}), dtype, device, source=f"{path} ({name})")
            components[name] = module
    components["image_processor"] = instantiate_from_config(config["image_processor"])
    components["scheduler"] = instantiate_from_config(config["scheduler"])
    return pipeline_class(**components, device=device, dtype=dtype, **kwargs)


def vae_from_file(
    vae_class: type,
    ckpt_path: str,
    config_path: str,
    device: str = "cuda",
    dtype: torch.dtype | None = None,
    use_safetensors: bool | None = None,
    **kwargs: Any,
) -> Any:
    """`vae_class.from_single_file(...)` (a ShapeVAE built from the config's params, keys without a prefix) with
    the module built without initialisation and the weights read tensor by tensor."""
    import torch

    dtype = torch.float16 if dtype is None else dtype
    params = {**_read_config(config_path)["params"], **kwargs}
    path = checkpoint_path(ckpt_path, use_safetensors)
    with open_checkpoint(path, use_safetensors) as tensors:
        with empty_parameters():
            vae = vae_class(**params)
        load_weights(vae, tensors, dtype, device, source=path)
    vae.to(device=device, dtype=dtype)
    return vae
