"""The hunyuan3d generator on a tiny random model of Hunyuan3D-2's architecture, saved and loaded like real weights.

The tests that run the model need the optional extra (`pip install 'orfeas[hunyuan]'`: hy3dgen, torchvision and
friends); they are skipped, with the reason, where it is missing. Everything runs on the CPU with the network cut.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from orfeas.errors import GeneratorUnavailable, InvalidOptions
from orfeas.pipeline.background import Cutout
from orfeas.pipeline.generators import GenerationParams, available_generators, create_generator, is_available
from orfeas.pipeline.generators.hunyuan import (
    INSTALL,
    HunyuanGenerator,
    find_weights,
    load_pipeline,
    missing_modules,
    read_options,
)
from orfeas.pipeline.settings import PipelineSettings

REPO = Path(__file__).resolve().parents[2]
STEPS = 2
TWO_STEPS = {"options": {"steps": STEPS}}
RESOLUTION = 64  # coarse grid 32, one refinement level


def _unavailable() -> str | None:
    missing = missing_modules()
    if missing:
        return f"hunyuan3d extra not installed (missing {', '.join(missing)}; {INSTALL})"
    try:
        import hy3dgen.shapegen  # noqa: F401
    except (ImportError, RuntimeError) as exc:  # e.g. a torchvision built for another torch
        return f"hy3dgen does not import here: {exc}"
    return None


UNAVAILABLE = _unavailable()
needs_hy3dgen = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """$HY3DGEN_MODELS holding a tiny random Hunyuan3D-2 at tencent/Hunyuan3D-2/hunyuan3d-dit-v2-0."""
    from orfeas.pipeline.generators.hunyuan_random import model_config, save_random_weights

    root = tmp_path_factory.mktemp("hy3dgen")
    save_random_weights(root / "tencent" / "Hunyuan3D-2" / "hunyuan3d-dit-v2-0", model_config(tiny=True))
    return root


@pytest.fixture(scope="module")
def generator(models, offline, tmp_path_factory) -> HunyuanGenerator:
    """The generator as the service builds it, weights found in hy3dgen's default layout and loaded once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HY3DGEN_MODELS", str(models))
        patch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hub")))
        # float32: a batch equals its images one by one to 1e-5 (bfloat16, the CPU default, is tested apart)
        built = create_generator("hunyuan3d", PipelineSettings(device="cpu", hunyuan_dtype="float32"))
        built.pipeline  # noqa: B018 - load now, inside the patched environment
    return built


def disc(radius: int, colour: tuple[int, int, int], size: int = 64) -> Cutout:
    rows, cols = np.mgrid[:size, :size]
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[(rows - size / 2) ** 2 + (cols - size / 2) ** 2 < radius**2] = (*colour, 255)
    return Cutout(rgba=rgba, method="test")


IMAGES = [disc(24, (220, 40, 40)), disc(14, (40, 200, 40)), disc(28, (40, 40, 220))]


def test_registry_lists_hunyuan3d_only_where_installed():
    settings = PipelineSettings()
    for name in ("inflate", "hunyuan3d", "no-such-generator"):
        assert is_available(name, settings) == (name in available_generators(settings))
    if missing_modules():
        assert "hunyuan3d" not in available_generators(settings)
        with pytest.raises(GeneratorUnavailable, match=r"pip install 'orfeas\[hunyuan\]'"):
            create_generator("hunyuan3d", settings)
    else:
        assert "hunyuan3d" in available_generators(settings)
        built = create_generator("hunyuan3d", settings)  # cheap: no weights are read yet
        assert built.name == "hunyuan3d" and built.default_resolution == settings.hunyuan_octree_resolution


@pytest.mark.parametrize(
    "options",
    [
        {"step": 10},
        {"steps": 0},
        {"steps": 2.5},
        {"steps": True},
        {"guidance_scale": 0.5},
        {"decoder": "marching"},
        {"model": "hunyuan3d-dit-v9"},
        {"model": 3},
    ],
)
def test_bad_options_are_refused_before_queueing(options):
    with pytest.raises(InvalidOptions):
        HunyuanGenerator(PipelineSettings()).check_options(options)


def test_good_options_are_accepted_and_kept(models, monkeypatch):
    monkeypatch.setenv("HY3DGEN_MODELS", str(models))
    options = {"steps": 12, "guidance_scale": 7.5, "decoder": "flashvdm"}
    assert HunyuanGenerator(PipelineSettings()).check_options(options) is None
    read = read_options(options, PipelineSettings())
    assert (read["steps"], read["guidance_scale"], read["decoder"]) == (12, 7.5, "flashvdm")
    assert read["model"] == PipelineSettings().hunyuan_model


def test_missing_weights_say_where_they_must_go(tmp_path, monkeypatch):
    monkeypatch.setenv("HY3DGEN_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(GeneratorUnavailable) as default_places:
        find_weights(PipelineSettings())
    message = str(default_places.value)
    assert str(tmp_path / "models" / "tencent" / "Hunyuan3D-2" / "hunyuan3d-dit-v2-0") in message
    assert "model.fp16.safetensors" in message and "ORFEAS_HUNYUAN_MODEL_PATH" in message
    with pytest.raises(GeneratorUnavailable, match="never downloads"):
        find_weights(PipelineSettings(hunyuan_model_path=tmp_path / "elsewhere"))


@needs_hy3dgen
def test_missing_weights_fail_the_generation_without_a_download(tmp_path, offline):
    generator = create_generator("hunyuan3d", PipelineSettings(device="cpu", hunyuan_model_path=tmp_path))
    with pytest.raises(GeneratorUnavailable, match=str(tmp_path)):
        generator.generate_batch(IMAGES[:1], GenerationParams(resolution=32, options={"steps": STEPS}))
    assert offline == []


@needs_hy3dgen
def test_an_image_encoder_named_by_hub_id_is_not_fetched(models, offline, tmp_path, monkeypatch):
    """config.yaml may name the image encoder by hub id instead of giving its config: the hub stays offline, so
    a model missing from the local cache is an error, not a download."""
    import shutil

    import yaml

    folder = tmp_path / "hunyuan3d-dit-v2-0"
    shutil.copytree(models / "tencent" / "Hunyuan3D-2" / "hunyuan3d-dit-v2-0", folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    encoder = config["conditioner"]["params"]["main_image_encoder"]["kwargs"]
    encoder.pop("config")
    encoder["version"] = "facebook/dinov2-giant"
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    generator = create_generator("hunyuan3d", PipelineSettings(device="cpu", hunyuan_model_path=folder))
    with pytest.raises(GeneratorUnavailable, match="cannot build hunyuan3d-dit-v2-0"):
        generator.pipeline  # noqa: B018
    assert offline == []


@needs_hy3dgen
def test_weights_in_a_named_folder_load(models, offline):
    folder = models / "tencent" / "Hunyuan3D-2"  # the repository folder: <subfolder>/ is found inside
    settings = PipelineSettings(device="cpu", hunyuan_model_path=folder)
    assert find_weights(settings).checkpoint == folder / "hunyuan3d-dit-v2-0" / "model.fp16.safetensors"
    generator = create_generator("hunyuan3d", settings)
    assert generator.pipeline.vae.latent_shape == (64, 8)
    assert offline == []


@needs_hy3dgen
def test_loading_leaves_the_process_environment_alone(models, offline):
    """The hub is held offline through huggingface_hub's own flag: os.environ, which other threads (the API's)
    read meanwhile, is the same while the model loads and after, and the flag is put back."""
    from huggingface_hub import constants

    before = dict(os.environ)
    flag_before = constants.HF_HUB_OFFLINE
    seen: list[tuple[dict[str, str], bool]] = []
    loaded = threading.Event()

    def watch() -> None:
        while not loaded.is_set():
            seen.append((dict(os.environ), constants.HF_HUB_OFFLINE))
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        load_pipeline(PipelineSettings(device="cpu", hunyuan_model_path=models / "tencent" / "Hunyuan3D-2"))
    finally:
        loaded.set()
        watcher.join()
    assert any(flag for _, flag in seen)  # the watcher looked while the load held the hub offline
    assert all(environment == before for environment, _ in seen)
    flag_after = constants.HF_HUB_OFFLINE
    assert dict(os.environ) == before and flag_after == flag_before
    assert offline == []


@needs_hy3dgen
def test_a_batch_is_one_forward_pass_per_step_and_equals_its_images_one_by_one(generator, offline):
    """N images in, N meshes out, each the mesh its image gives alone with the same seed.

    Not bit-equal: float32 matrix products over a batch of 6 sequences and over one of 2 sum in different orders
    (about 1e-7 relative), so latents and vertices agree to 1e-5 (the grid spacing here is 3e-2), with the same
    triangles.
    """
    calls: list[int] = []
    hook = generator.pipeline.model.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape[0]))
    try:
        meshes = generator.generate_batch(
            IMAGES, GenerationParams(resolution=RESOLUTION, seeds=(11, 12, 13), **TWO_STEPS)
        )
    finally:
        hook.remove()
    assert calls == [2 * len(IMAGES)] * STEPS  # one pass per step: conditional + unconditional copy of every image

    assert len(meshes) == len(IMAGES)
    for index, (image, mesh) in enumerate(zip(IMAGES, meshes, strict=True)):
        alone = generator.generate_batch(
            [image], GenerationParams(resolution=RESOLUTION, seed=11 + index, **TWO_STEPS)
        )[0]
        assert mesh.faces.shape == alone.faces.shape and np.array_equal(mesh.faces, alone.faces)
        np.testing.assert_allclose(mesh.vertices, alone.vertices, atol=1e-5)
        assert mesh.volume > 0  # outward-facing
        assert np.all(np.abs(mesh.vertices) <= 1.01 + 1e-6)
    # different images and seeds give different shapes
    assert len({len(m.faces) for m in meshes}) == len(meshes)
    assert offline == []  # loading (the fixture) and generating never reached for the network


@needs_hy3dgen
def test_the_seed_decides_the_shape(generator):
    params = {"resolution": 32, "options": {"steps": STEPS}}
    first = generator.generate_batch(IMAGES[:1], GenerationParams(seed=5, **params))[0]
    again = generator.generate_batch(IMAGES[:1], GenerationParams(seed=5, **params))[0]
    other = generator.generate_batch(IMAGES[:1], GenerationParams(seed=6, **params))[0]
    np.testing.assert_array_equal(first.vertices, again.vertices)
    assert first.vertices.shape != other.vertices.shape or not np.allclose(first.vertices, other.vertices)


@needs_hy3dgen
@pytest.mark.parametrize("decoder", ["dense", "hierarchical", "flashvdm"])
def test_every_decoder_gives_a_closed_outward_mesh(generator, decoder):
    params = GenerationParams(resolution=32, seed=3, options={"steps": STEPS, "decoder": decoder})
    mesh = generator.generate_batch(IMAGES[:1], params)[0]
    assert len(mesh.faces) > 100 and mesh.volume > 0


def test_memory_estimate_counts_guidance_copies_and_precision():
    gpu = HunyuanGenerator(PipelineSettings(device="cuda:0")).memory_per_image(GenerationParams())
    cpu = HunyuanGenerator(PipelineSettings(device="cpu", hunyuan_dtype="float32")).memory_per_image(GenerationParams())
    # full size, float16: 2 sequences of 3072 + 1370 tokens x 1024 x 10 values x 2 bytes, plus the conditioner
    assert 150 * 2**20 < gpu < 400 * 2**20
    assert cpu > 2 * gpu  # float32 and the attention score matrices


@needs_hy3dgen
def test_gpu_benchmark_runs_in_its_tiny_cpu_mode(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "bench/gpu_hunyuan.py", "--tiny", "--device", "cpu", "--json", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    stages = {(r["stage"], r["batch"]) for r in rows}
    assert {("diffusion", 1), ("diffusion", 2), ("decode dense", 1), ("decode hierarchical", 1)} <= stages
    assert all(r["seconds_per_image"] > 0 for r in rows)


@needs_hy3dgen
def test_a_photo_becomes_model_files_through_the_pipeline(generator, tmp_path):
    """The user's path: image file -> cut-out -> hunyuan3d -> cleanup, texture, export frame -> GLB and STL."""
    from orfeas import GenerateOptions, generate, save_result

    options = GenerateOptions(backend="hunyuan3d", resolution=32, generator_options={"steps": STEPS}, formats="glb,stl")
    result = generate(REPO / "examples" / "chair.png", options, generator.settings, generator=generator)
    assert result.report()["generator"] == "hunyuan3d"
    assert np.isclose(np.max(result.mesh.extents), 1.0) and result.mesh.volume > 0
    files = save_result(result, tmp_path, "chair")
    assert {f.suffix for f in files} == {".glb", ".stl", ".json"} and all(f.stat().st_size > 0 for f in files)


@needs_hy3dgen
def test_flashvdm_leaves_the_decoder_as_it_found_it(generator):
    """hy3dgen's FlashVDM installs its own attention on the shape decoder; later decodings must not see it."""
    params = {"resolution": 32, "seed": 4}
    before = generator.generate_batch(IMAGES[:1], GenerationParams(options={"steps": STEPS}, **params))[0]
    generator.generate_batch(IMAGES[:1], GenerationParams(options={"steps": STEPS, "decoder": "flashvdm"}, **params))
    after = generator.generate_batch(IMAGES[:1], GenerationParams(options={"steps": STEPS}, **params))[0]
    np.testing.assert_array_equal(before.vertices, after.vertices)


@needs_hy3dgen
def test_half_precision_gives_nearly_the_float32_shape(generator, models, monkeypatch):
    """bfloat16 weights and activations (float16's path on a GPU, runnable here) with float32 query points."""
    monkeypatch.setenv("HY3DGEN_MODELS", str(models))
    half = create_generator("hunyuan3d", PipelineSettings(device="cpu", hunyuan_dtype="bfloat16"))
    params = GenerationParams(resolution=RESOLUTION, seed=1, options={"steps": STEPS})
    reference = generator.generate_batch(IMAGES[:1], params)[0]
    mesh = half.generate_batch(IMAGES[:1], params)[0]
    assert half.pipeline.model.latent_in.weight.dtype.itemsize == 2
    assert mesh.volume == pytest.approx(reference.volume, rel=0.05)


@needs_hy3dgen
def test_the_worker_runs_queued_hunyuan3d_jobs_as_one_batch(generator, models, tmp_path, monkeypatch):
    """Three queued jobs: one claim, one generator call, one DiT pass per step for all of them, three results."""
    from orfeas.config import Settings
    from orfeas.pipeline.options import GenerateOptions
    from orfeas.service.auth import LOCAL_USER
    from orfeas.service.batch_sizing import BatchSizer, MemoryProbe
    from orfeas.service.jobs import JobService, Upload
    from orfeas.service.worker import Worker
    from orfeas.store.artifacts import LocalArtifactStore
    from orfeas.store.db import create_db_engine, sqlite_url
    from orfeas.store.jobs import JobStore
    from orfeas.store.migrate import init_db

    monkeypatch.setenv("HY3DGEN_MODELS", str(models))  # the submission checks that the model's weights are there
    settings = Settings(data_dir=tmp_path, device="cpu", hunyuan_dtype="float32")
    engine = create_db_engine(sqlite_url(tmp_path))
    init_db(engine)
    store, artifacts = JobStore(engine), LocalArtifactStore(tmp_path)
    worker = Worker(store, artifacts, settings, BatchSizer(MemoryProbe("cpu"), max_batch=8), worker_id="w")
    worker.generators["hunyuan3d"] = generator  # the loaded one, as the worker keeps it after its first job
    chair = Upload("chair.png", (REPO / "examples" / "chair.png").read_bytes())
    options = GenerateOptions(backend="hunyuan3d", resolution=32, faces=2000, generator_options={"steps": STEPS})
    jobs, _ = JobService(store, artifacts, settings).submit([chair, chair, chair], options, LOCAL_USER)

    calls: list[int] = []
    hook = generator.pipeline.model.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape[0]))
    try:
        assert worker.run_once()
    finally:
        hook.remove()
    assert calls == [2 * 3] * STEPS
    for job in jobs:
        record = store.get(job.id)
        assert record.status == "succeeded", record.error
        assert record.result["generator"] == "hunyuan3d" and record.result["batch_size"] == 3
