"""The Hunyuan3D-2 family through the hunyuan3d generator: one tiny random model per family member (turbo, mini,
multi-view; the standard one is tests/pipeline/test_hunyuan.py's), saved in the users' layout with the VAE it pairs
with, found and loaded by the same code as real weights, on the CPU with the network cut.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from orfeas.config import Settings
from orfeas.errors import InvalidOptions
from orfeas.pipeline.background import Cutout
from orfeas.pipeline.generators import GenerationParams, create_generator
from orfeas.pipeline.generators.hunyuan import (
    HunyuanGenerator,
    resolve_dtype,
    use_worker_cores,
)
from orfeas.pipeline.generators.hunyuan_variants import (
    CONSISTENCY,
    FLOW_MATCHING,
    VARIANTS,
    find_weights,
    variant_status,
)
from orfeas.pipeline.settings import PipelineSettings
from tests.pipeline.test_hunyuan import UNAVAILABLE, needs_hy3dgen

REPO = Path(__file__).resolve().parents[2]
STEPS = 2
FAMILY = {  # family member -> (variant, DiT sequences per item per step)
    "turbo": ("hunyuan3d-dit-v2-0-turbo", 1),
    "mini": ("hunyuan3d-dit-v2-mini", 2),
    "mini-turbo": ("hunyuan3d-dit-v2-mini-turbo", 1),
    "mv": ("hunyuan3d-dit-v2-mv", 2),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """$HY3DGEN_MODELS with a tiny random model of each family member (and the turbo VAEs they pair with)."""
    if UNAVAILABLE:
        pytest.skip(UNAVAILABLE)
    from orfeas.pipeline.generators.hunyuan_random import save_random_variant

    root = tmp_path_factory.mktemp("hy3dgen")
    for seed, (model, _) in enumerate(FAMILY.values()):
        save_random_variant(root, model, seed=seed)
    return root


@pytest.fixture(scope="module")
def generator(models, offline, tmp_path_factory) -> HunyuanGenerator:
    """The generator as the service builds it, models found in hy3dgen's layout (float32: exact batch checks)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HY3DGEN_MODELS", str(models))
        patch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hub")))
        yield create_generator("hunyuan3d", PipelineSettings(device="cpu", hunyuan_dtype="float32"))


def disc(radius: int, colour: tuple[int, int, int], size: int = 64) -> Cutout:
    rows, cols = np.mgrid[:size, :size]
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[(rows - size / 2) ** 2 + (cols - size / 2) ** 2 < radius**2] = (*colour, 255)
    return Cutout(rgba=rgba, method="test")


IMAGES = [disc(24, (220, 40, 40)), disc(14, (40, 200, 40)), disc(28, (40, 40, 220))]


def views(names: tuple[str, ...], shift: int) -> dict[str, Cutout]:
    return {name: IMAGES[(index + shift) % len(IMAGES)] for index, name in enumerate(names)}


def count_dit_passes(pipeline) -> tuple[list[tuple[int, int]], object]:
    """Record (sequences, condition tokens) of every DiT forward pass."""
    calls: list[tuple[int, int]] = []
    hook = pipeline.model.register_forward_hook(
        lambda _m, args, _out: calls.append((args[0].shape[0], args[2]["main"].shape[1]))
    )
    return calls, hook


def test_the_registry_has_every_published_variant_with_its_defaults():
    families = {"standard": "hunyuan3d-dit-v2-0", "mini": "hunyuan3d-dit-v2-mini", "mv": "hunyuan3d-dit-v2-mv"}
    assert set(VARIANTS) == {f"{base}{speed}" for base in families.values() for speed in ("", "-fast", "-turbo")}
    for variant in VARIANTS.values():
        turbo, fast = variant.name.endswith("-turbo"), variant.name.endswith("-fast")
        assert variant.steps == (5 if turbo else 30)
        assert variant.scheduler == (CONSISTENCY if turbo else FLOW_MATCHING)
        assert variant.guidance_distilled == (turbo or fast)
        assert (variant.vae is not None) == turbo
        assert variant.multiview == (variant.family == "mv")
    assert VARIANTS["hunyuan3d-dit-v2-mini-turbo"].vae == "hunyuan3d-vae-v2-mini-turbo"
    assert VARIANTS["hunyuan3d-dit-v2-mv-turbo"].vae_repo == "tencent/Hunyuan3D-2"  # 2mv uses Hunyuan3D-2's VAE
    assert VARIANTS["hunyuan3d-dit-v2-mini"].latents == 512


def test_steps_and_guidance_default_to_the_variant_unless_set(monkeypatch):
    from orfeas.pipeline.generators.hunyuan import read_options

    monkeypatch.delenv("ORFEAS_HUNYUAN_STEPS", raising=False)
    assert read_options({"model": "hunyuan3d-dit-v2-mini-turbo"}, Settings().pipeline())["steps"] == 5
    assert read_options({}, Settings().pipeline())["steps"] == 30
    monkeypatch.setenv("ORFEAS_HUNYUAN_STEPS", "12")
    assert read_options({"model": "hunyuan3d-dit-v2-mini-turbo"}, Settings().pipeline())["steps"] == 12
    assert read_options({"model": "hunyuan3d-dit-v2-mini-turbo", "steps": 3}, Settings().pipeline())["steps"] == 3
    assert read_options({"model": "hunyuan3d-dit-v2-mini-turbo"}, PipelineSettings())["steps"] == 5  # no env read
    assert read_options({}, PipelineSettings(hunyuan_steps=12))["steps"] == 12


def test_status_and_submission_check_name_the_missing_files_and_their_folder(tmp_path, monkeypatch):
    """Only the DiT of the turbo variant is present: its turbo VAE is what is missing, and where it must go."""
    monkeypatch.setenv("HY3DGEN_MODELS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    dit = tmp_path / "tencent" / "Hunyuan3D-2" / "hunyuan3d-dit-v2-0-turbo"
    dit.mkdir(parents=True)
    (dit / "config.yaml").write_text("model: {}\n")
    (dit / "model.fp16.safetensors").write_bytes(b"")
    settings = PipelineSettings()
    status = {s.model: s for s in variant_status(settings)}
    assert set(status) == set(VARIANTS) and not any(s.usable for s in status.values())
    turbo = status["hunyuan3d-dit-v2-0-turbo"]
    vae_folder = tmp_path / "tencent" / "Hunyuan3D-2" / "hunyuan3d-vae-v2-0-turbo"
    assert turbo.missing == (f"{vae_folder}/config.yaml", f"{vae_folder}/model.fp16.safetensors")
    assert turbo.folders == (str(dit), str(vae_folder))
    mini = status["hunyuan3d-dit-v2-mini"]
    assert mini.folders == (str(tmp_path / "tencent" / "Hunyuan3D-2mini" / "hunyuan3d-dit-v2-mini"),)
    assert "never downloads" in mini.message and mini.to_dict()["usable"] is False

    generator = HunyuanGenerator(settings)
    with pytest.raises(InvalidOptions) as refused:
        generator.check_options({"model": "hunyuan3d-dit-v2-0-turbo"})
    assert str(vae_folder) in str(refused.value) and "hunyuan3d-vae-v2-0-turbo" in str(refused.value)
    with pytest.raises(InvalidOptions, match="hunyuan3d-dit-v2-0 has no weights"):
        generator.check_options({})  # the default model is checked too


@needs_hy3dgen
@pytest.mark.parametrize("member", list(FAMILY))
def test_each_family_member_loads_with_its_scheduler_and_vae_and_batches_exactly(generator, member, offline):
    """N items in, N meshes out, each the mesh its item gives alone with the same seed; one DiT pass per step for
    the batch, with one sequence per item for a guidance-distilled model and two otherwise; the scheduler the
    saved config names does the stepping; a -turbo model decodes with its own (turbo) VAE."""
    model, sequences = FAMILY[member]
    variant = VARIANTS[model]
    items = [views(("front", "back"), i) for i in range(2)] if variant.multiview else IMAGES[:2]
    options = {"model": model, "steps": STEPS}
    pipeline = generator.pipeline_for(model)

    config = yaml.safe_load(find_weights(generator.settings, model).config.read_text())
    assert type(pipeline.scheduler).__name__ == config["scheduler"]["target"].rsplit(".", 1)[1] == variant.scheduler
    assert pipeline.vae.geo_decoder_ln_post == (variant.vae is None)  # the turbo VAE has no final layer norm
    steps_taken: list[float] = []
    step = pipeline.scheduler.step
    pipeline.scheduler.step = lambda *a, **k: steps_taken.append(1.0) or step(*a, **k)
    calls, hook = count_dit_passes(pipeline)
    try:
        meshes = generator.generate_batch(items, GenerationParams(resolution=32, seeds=(11, 12), options=options))
    finally:
        hook.remove()
        del pipeline.scheduler.step
    assert len(steps_taken) == STEPS
    tokens = pipeline.conditioner.main_image_encoder.num_patches * (2 if variant.multiview else 1)
    assert calls == [(sequences * len(items), tokens)] * STEPS

    assert len(meshes) == len(items)
    for index, (item, mesh) in enumerate(zip(items, meshes, strict=True)):
        alone = generator.generate_batch([item], GenerationParams(resolution=32, seed=11 + index, options=options))
        assert np.array_equal(mesh.faces, alone[0].faces)
        np.testing.assert_allclose(mesh.vertices, alone[0].vertices, atol=1e-5)
        assert len(mesh.faces) > 0
    assert offline == []


@needs_hy3dgen
def test_a_multi_view_model_takes_two_to_four_views_in_any_order(generator):
    model = "hunyuan3d-dit-v2-mv"
    pipeline = generator.pipeline_for(model)
    patches = pipeline.conditioner.main_image_encoder.num_patches
    four = ("front", "left", "back", "right")
    params = GenerationParams(resolution=32, seeds=(3, 4), options={"model": model, "steps": STEPS})
    calls, hook = count_dit_passes(pipeline)
    try:
        meshes = generator.generate_batch([views(four, 0), views(four, 1)], params)
    finally:
        hook.remove()
    assert calls == [(2 * 2, 4 * patches)] * STEPS and len(meshes) == 2
    # the view names, not the mapping's order, decide which view embedding each image gets
    shuffled = dict(reversed(list(views(four, 0).items())))
    again = generator.generate_batch([shuffled], GenerationParams(resolution=32, seed=3, options=params.options))[0]
    np.testing.assert_allclose(again.vertices, meshes[0].vertices, atol=1e-5)


@needs_hy3dgen
@pytest.mark.parametrize(
    ("model", "items", "message"),
    [
        ("hunyuan3d-dit-v2-mv", [IMAGES[0]], "takes views"),
        ("hunyuan3d-dit-v2-mini", [{"front": IMAGES[0], "back": IMAGES[1]}], "takes one image"),
        ("hunyuan3d-dit-v2-mv", [{"back": IMAGES[0]}], "needs a front view"),
        ("hunyuan3d-dit-v2-mv", [{"front": IMAGES[0], "top": IMAGES[1]}], "unknown views"),
        ("hunyuan3d-dit-v2-mv", [{"front": IMAGES[0]}, {"front": IMAGES[0], "back": IMAGES[1]}], "same views"),
        ("hunyuan3d-dit-v2-mv", [{"front": IMAGES[0]}, IMAGES[1]], "single images only"),
    ],
)
def test_input_that_does_not_suit_the_model_is_refused(generator, model, items, message):
    with pytest.raises(InvalidOptions, match=message):
        generator.generate_batch(items, GenerationParams(resolution=32, options={"model": model, "steps": 1}))


@needs_hy3dgen
def test_views_go_through_the_pipeline_from_files(generator, tmp_path):
    """The user's path with views: files -> cut-outs (each view) -> mv model -> mesh textured from the front."""
    from orfeas import GenerateOptions, generate
    from orfeas.pipeline.generate import batch_key, check_input_views

    chair = REPO / "examples" / "chair.png"
    options = GenerateOptions(
        backend="hunyuan3d", resolution=32, generator_options={"model": "hunyuan3d-dit-v2-mv", "steps": 1}
    )
    result = generate({"back": chair, "front": chair}, options, generator.settings, generator=generator)
    assert result.report()["generator"] == "hunyuan3d" and len(result.mesh.faces) > 0
    assert result.profile.stages["background_removal"] > 0
    with pytest.raises(InvalidOptions, match="takes one image"):
        generate({"front": chair}, options.model_copy(update={"generator_options": {}}), generator=generator)
    inflate = create_generator("inflate", generator.settings)
    with pytest.raises(InvalidOptions, match="not views"):
        check_input_views(inflate, GenerateOptions(), ("front",))
    assert batch_key(options, ("front", "back")) == batch_key(options, ("back", "front")) != batch_key(options)


@needs_hy3dgen
def test_a_model_folder_named_directly_finds_its_turbo_vae_beside_it(models, tmp_path, monkeypatch):
    """ORFEAS_HUNYUAN_MODEL_PATH naming the DiT folder of a downloaded repository: the VAE is its sibling."""
    repo = tmp_path / "Hunyuan3D-2mini"
    for folder in ("hunyuan3d-dit-v2-mini-turbo", "hunyuan3d-vae-v2-mini-turbo"):
        shutil.copytree(models / "tencent" / "Hunyuan3D-2mini" / folder, repo / folder)
    settings = PipelineSettings(
        hunyuan_model="hunyuan3d-dit-v2-mini-turbo", hunyuan_model_path=repo / "hunyuan3d-dit-v2-mini-turbo"
    )
    weights = find_weights(settings)
    assert weights.config.parent.name == "hunyuan3d-dit-v2-mini-turbo"
    assert weights.vae_checkpoint == repo / "hunyuan3d-vae-v2-mini-turbo" / "model.fp16.safetensors"
    usable = {s.model for s in variant_status(settings) if s.usable}
    assert usable == {"hunyuan3d-dit-v2-mini-turbo"}


def test_memory_estimate_follows_the_variant():
    generator = HunyuanGenerator(PipelineSettings(device="cuda:0"))

    def estimate(model: str) -> int:
        return generator.memory_per_image(GenerationParams(options={"model": model}))

    # 2mini's 512 latents and guidance distillation's single sequence shrink it; four views' tokens grow it
    assert (
        estimate("hunyuan3d-dit-v2-mini-turbo") < estimate("hunyuan3d-dit-v2-0-turbo") < estimate("hunyuan3d-dit-v2-0")
    )
    assert estimate("hunyuan3d-dit-v2-0-fast") == estimate("hunyuan3d-dit-v2-0-turbo")
    assert estimate("hunyuan3d-dit-v2-mv") > 2 * estimate("hunyuan3d-dit-v2-0")


@needs_hy3dgen
def test_the_cpu_runs_bfloat16_where_it_has_it_on_the_workers_cores():
    import torch

    from orfeas.pipeline.generators.hunyuan import cpu_has_bf16

    expected = torch.bfloat16 if cpu_has_bf16() else torch.float32
    assert resolve_dtype("auto", "cpu") == expected
    assert resolve_dtype("auto", "cuda:0") == torch.float16
    before = torch.get_num_threads()
    try:
        assert use_worker_cores() == len(os.sched_getaffinity(0)) == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@needs_hy3dgen
def test_bfloat16_on_the_cpu_gives_nearly_the_float32_shape(generator, models, monkeypatch):
    monkeypatch.setenv("HY3DGEN_MODELS", str(models))
    half = create_generator("hunyuan3d", PipelineSettings(device="cpu", hunyuan_dtype="bfloat16"))
    params = GenerationParams(resolution=32, seed=1, options={"model": "hunyuan3d-dit-v2-mini-turbo", "steps": 2})
    reference = generator.generate_batch(IMAGES[:1], params)[0]
    mesh = half.generate_batch(IMAGES[:1], params)[0]
    assert half.pipeline_for("hunyuan3d-dit-v2-mini-turbo").vae.post_kl.weight.dtype == torch_bf16()
    assert mesh.volume == pytest.approx(reference.volume, rel=0.05)
    # hy3dgen's FlashVDM path meshes through numpy, which has no bfloat16
    flashvdm = GenerationParams(resolution=32, seed=1, options={**params.options, "decoder": "flashvdm"})
    assert len(half.generate_batch(IMAGES[:1], flashvdm)[0].faces) > 0


def torch_bf16():
    import torch

    return torch.bfloat16


@needs_hy3dgen
def test_a_canceled_batch_stops_between_diffusion_steps(generator):
    from orfeas.errors import Stopped

    model = "hunyuan3d-dit-v2-mini-turbo"
    asked: list[int] = []
    params = GenerationParams(
        resolution=32, options={"model": model, "steps": 4}, should_stop=lambda: asked.append(1) or len(asked) >= 2
    )
    calls, hook = count_dit_passes(generator.pipeline_for(model))
    try:
        with pytest.raises(Stopped):
            generator.generate_batch(IMAGES[:2], params)
    finally:
        hook.remove()
    assert len(calls) == 2  # asked after each step: the second answer stopped it before the third step
