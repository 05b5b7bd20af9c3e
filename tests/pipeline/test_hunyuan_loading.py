"""Loading Hunyuan3D-2 without random initialisation gives what hy3dgen's `from_single_file` gives.

Tiny random models in the users' layout (hunyuan_random), loaded both ways on the CPU with the network cut.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from orfeas.errors import GeneratorUnavailable
from orfeas.pipeline.generators.hunyuan import decode_latents, load_pipeline, sample_latents
from orfeas.pipeline.settings import PipelineSettings
from tests.pipeline.test_hunyuan import IMAGES, UNAVAILABLE, needs_hy3dgen

pytestmark = needs_hy3dgen
MODELS = ("hunyuan3d-dit-v2-0", "hunyuan3d-dit-v2-mv", "hunyuan3d-dit-v2-mini-turbo")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """$HY3DGEN_MODELS with tiny random models: a single-image one, a multi-view one and a -turbo one with its VAE."""
    if UNAVAILABLE:
        pytest.skip(UNAVAILABLE)
    from orfeas.pipeline.generators.hunyuan_random import save_random_variant

    root = tmp_path_factory.mktemp("hy3dgen")
    for seed, model in enumerate(MODELS):
        save_random_variant(root, model, seed=seed)
    return root


def folder(models: Path, model: str) -> Path:
    from orfeas.pipeline.generators.hunyuan_variants import get_variant

    return models / get_variant(model).repo / model


def both_ways(checkpoint: Path, dtype, use_safetensors: bool = True):
    """(hy3dgen's pipeline, ours) from the same files."""
    from hy3dgen.shapegen import Hunyuan3DDiTFlowMatchingPipeline

    from orfeas.pipeline.generators.hunyuan_loading import pipeline_from_file

    args = (str(checkpoint), str(checkpoint.parent / "config.yaml"))
    kwargs = {"device": "cpu", "dtype": dtype, "use_safetensors": use_safetensors}
    theirs = Hunyuan3DDiTFlowMatchingPipeline.from_single_file(*args, **kwargs)
    ours = pipeline_from_file(Hunyuan3DDiTFlowMatchingPipeline, *args, **kwargs)
    return theirs, ours


def tensors(module) -> dict:
    """Every parameter, buffer and plain tensor attribute of a module and its children, by name."""
    import torch

    found = {f"param {k}": v for k, v in module.named_parameters()}
    found |= {f"buffer {k}": v for k, v in module.named_buffers()}
    for prefix, child in module.named_modules():
        found |= {f"attr {prefix}.{k}": v for k, v in vars(child).items() if isinstance(v, torch.Tensor)}
    return found


def assert_same_modules(theirs, ours) -> None:
    """Same tensors (values, dtypes, devices, requires_grad) and the same train/eval modes, component by component."""
    import torch

    for name in ("model", "vae", "conditioner"):
        a, b = tensors(getattr(theirs, name)), tensors(getattr(ours, name))
        assert a.keys() == b.keys(), name
        for key in a:
            assert not b[key].is_meta, key
            assert (a[key].dtype, a[key].device, a[key].requires_grad) == (
                b[key].dtype,
                b[key].device,
                b[key].requires_grad,
            ), key
            assert torch.equal(a[key], b[key]), key
        modes = [m.training for m in getattr(theirs, name).modules()]
        assert modes == [m.training for m in getattr(ours, name).modules()], name
    assert type(theirs.scheduler) is type(ours.scheduler) and theirs.scheduler.config == ours.scheduler.config
    assert type(theirs.image_processor) is type(ours.image_processor)
    assert (theirs.device, theirs.dtype) == (ours.device, ours.dtype)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_the_loaded_modules_equal_hy3dgens(models, offline, model, dtype_name):
    """Every tensor, including those not in the checkpoint (the VAE's Fourier frequencies, the multi-view
    encoder's view embeddings), equals the one hy3dgen's loading gives, in the target dtype."""
    import torch

    theirs, ours = both_ways(folder(models, model) / "model.fp16.safetensors", getattr(torch, dtype_name))
    assert_same_modules(theirs, ours)
    assert offline == []


def test_the_loaded_pipeline_samples_and_decodes_as_hy3dgens(models, offline):
    """Same seed, float32: the same latents and the same mesh."""
    import torch

    theirs, ours = both_ways(folder(models, MODELS[0]) / "model.fp16.safetensors", torch.float32)
    latents = [sample_latents(p, IMAGES[:2], [5, 6], steps=2, guidance_scale=5.0) for p in (theirs, ours)]
    torch.testing.assert_close(latents[0], latents[1], atol=1e-5, rtol=0)
    meshes = [decode_latents(p, latents[0][:1], 32, "dense", 20_000) for p in (theirs, ours)]
    assert np.array_equal(meshes[0].faces, meshes[1].faces) and len(meshes[0].faces) > 0
    np.testing.assert_allclose(meshes[0].vertices, meshes[1].vertices, atol=1e-5)


def test_a_turbo_vae_loads_as_hy3dgens(models, offline):
    import torch
    from hy3dgen.shapegen.models import ShapeVAE

    from orfeas.pipeline.generators.hunyuan_loading import vae_from_file
    from orfeas.pipeline.generators.hunyuan_variants import get_variant

    variant = get_variant("hunyuan3d-dit-v2-mini-turbo")
    checkpoint = models / variant.vae_repo / variant.vae / "model.fp16.safetensors"
    args = (str(checkpoint), str(checkpoint.parent / "config.yaml"))
    theirs = ShapeVAE.from_single_file(*args, device="cpu", dtype=torch.bfloat16, use_safetensors=True)
    ours = vae_from_file(ShapeVAE, *args, device="cpu", dtype=torch.bfloat16, use_safetensors=True)
    a, b = tensors(theirs), tensors(ours)
    assert a.keys() == b.keys() and "buffer fourier_embedder.frequencies" in a
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_a_ckpt_file_loads_like_the_safetensors(models, tmp_path):
    """A .ckpt (torch.save of {"model": ..., "vae": ..., "conditioner": ...}) is read memory-mapped, as hy3dgen
    reads it, and gives the same pipeline."""
    import shutil

    import torch
    from safetensors.torch import load_file

    source = folder(models, MODELS[0])
    flat = load_file(str(source / "model.fp16.safetensors"))
    nested: dict[str, dict] = {}
    for key, value in flat.items():
        name, rest = key.split(".", 1)
        nested.setdefault(name, {})[rest] = value
    torch.save(nested, tmp_path / "model.ckpt")
    shutil.copy(source / "config.yaml", tmp_path / "config.yaml")
    theirs, ours = both_ways(tmp_path / "model.ckpt", torch.bfloat16, use_safetensors=False)
    assert_same_modules(theirs, ours)
    _, from_safetensors = both_ways(source / "model.fp16.safetensors", torch.bfloat16)
    assert_same_modules(ours, from_safetensors)


def write_checkpoint(tmp_path: Path, models: Path, change) -> Path:
    """A copy of the tiny model whose tensors `change(dict)` edits."""
    import shutil

    from safetensors.torch import load_file, save_file

    source = folder(models, MODELS[0])
    flat = load_file(str(source / "model.fp16.safetensors"))
    change(flat)
    target = tmp_path / "tencent" / "Hunyuan3D-2" / MODELS[0]
    target.mkdir(parents=True)
    shutil.copy(source / "config.yaml", target / "config.yaml")
    save_file(flat, str(target / "model.fp16.safetensors"))
    return target / "model.fp16.safetensors"


def test_a_checkpoint_without_a_conditioner_keeps_the_constructors_weights(models, tmp_path):
    """As in hy3dgen: the conditioner is built with its own (here random) weights, none left on the meta device."""
    import torch

    checkpoint = write_checkpoint(
        tmp_path, models, lambda flat: [flat.pop(k) for k in [k for k in flat if k.startswith("conditioner.")]]
    )
    _, ours = both_ways(checkpoint, torch.bfloat16)
    values = tensors(ours.conditioner)
    assert values and not any(v.is_meta for v in values.values())
    assert {v.dtype for k, v in values.items() if k.startswith("param")} == {torch.bfloat16}
    assert all(torch.isfinite(v.float()).all() for v in values.values())


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda flat: flat.pop("vae.post_kl.weight"), "missing keys 1 (post_kl.weight)"),
        (
            lambda flat: flat.update({"model.extra": flat["model.latent_in.weight"].clone()}),
            "unexpected keys 1 (extra)",
        ),
        (lambda flat: flat.update({"vae.post_kl.weight": flat["vae.post_kl.weight"][:1]}), "post_kl.weight has shape"),
    ],
)
def test_a_mismatched_checkpoint_is_refused_naming_the_file(models, tmp_path, monkeypatch, offline, change, message):
    checkpoint = write_checkpoint(tmp_path, models, lambda flat: change(flat))
    monkeypatch.setenv("HY3DGEN_MODELS", str(tmp_path))
    with pytest.raises(GeneratorUnavailable, match="hunyuan3d cannot build") as caught:
        load_pipeline(PipelineSettings(device="cpu", hunyuan_dtype="float32"))
    assert str(checkpoint) in str(caught.value) and message in str(caught.value)
    assert offline == []


def test_a_truncated_safetensors_file_is_refused(models, tmp_path, monkeypatch):
    checkpoint = write_checkpoint(tmp_path, models, lambda flat: None)
    checkpoint.write_bytes(checkpoint.read_bytes()[:-100])
    monkeypatch.setenv("HY3DGEN_MODELS", str(tmp_path))
    with pytest.raises(GeneratorUnavailable, match="ends inside a tensor"):
        load_pipeline(PipelineSettings(device="cpu", hunyuan_dtype="float32"))


def test_only_the_loading_thread_gets_empty_parameters():
    import torch

    from orfeas.pipeline.generators.hunyuan_loading import empty_parameters

    original = torch.nn.Module.register_parameter
    elsewhere: list[torch.nn.Linear] = []
    with empty_parameters():
        here = torch.nn.Linear(4, 4)
        thread = threading.Thread(target=lambda: elsewhere.append(torch.nn.Linear(4, 4)))
        thread.start()
        thread.join()
        with empty_parameters():  # nested use keeps the patch until the outer block ends
            pass
        assert torch.nn.Linear(2, 2).weight.is_meta
    assert here.weight.is_meta and isinstance(here.weight, torch.nn.Parameter)
    assert not elsewhere[0].weight.is_meta and torch.nn.Module.register_parameter is original
    assert not torch.nn.Linear(2, 2).weight.is_meta
