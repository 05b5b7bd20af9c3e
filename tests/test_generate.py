"""The Python API on the real test images: every stage runs and the mesh is usable."""

import numpy as np
import pytest

from orfeas import GenerateOptions, PipelineSettings, generate, generate_batch
from orfeas.errors import InvalidImage
from orfeas.evaluation import silhouette_iou
from orfeas.pipeline.image import load_image
from tests.synthetic import example_images

STAGES = [
    "image_loading",
    "background_removal",
    "shape_generation",
    "mesh_extraction",
    "mesh_cleanup",
    "texturing",
]


@pytest.fixture(scope="module")
def results():
    images = example_images()
    assert images, "examples/ has no images"
    return {path.stem: (path, generate(path)) for path in images}


def test_every_example_gives_a_closed_textured_mesh_within_budget(results):
    for name, (_, result) in results.items():
        mesh = result.mesh
        assert mesh.is_watertight, name
        assert 1_000 < len(mesh.faces) <= 50_000, name
        assert mesh.visual.kind == "texture", name


def test_meshes_are_in_the_export_frame(results):
    for name, (_, result) in results.items():
        bounds = result.mesh.bounds
        assert np.allclose(bounds.mean(axis=0), 0, atol=1e-6), name
        assert result.mesh.extents.max() == pytest.approx(1.0), name


def test_silhouette_matches_the_input(results):
    for name, (_, result) in results.items():
        assert silhouette_iou(result.mesh, result.cutout.mask) >= 0.93, name


def test_profile_times_every_stage_and_names_the_slowest(results):
    for _, result in results.values():
        report = result.report()
        assert list(report["profile"]["stages"]) == STAGES
        assert report["profile"]["slowest_stage"] in STAGES
        assert report["generator"] == "inflate"
        assert report["watertight"] is True


def test_y_is_up_and_x_is_right(results):
    # the mesh seen from +Z matches the input, not its upside-down or left-right mirror
    _, result = results["flamingo"]
    mask = result.cutout.mask
    upright = silhouette_iou(result.mesh, mask)
    assert upright > silhouette_iou(result.mesh, mask[::-1]) + 0.2
    assert upright > silhouette_iou(result.mesh, mask[:, ::-1]) + 0.1


def test_a_batch_matches_images_run_one_by_one():
    paths = example_images()[:2]
    options = GenerateOptions(faces=5_000)
    batch = generate_batch(paths, options)
    assert [r.batch_size for r in batch] == [2, 2]
    for path, result in zip(paths, batch, strict=True):
        single = generate(path, options)
        assert len(single.mesh.faces) == len(result.mesh.faces)


def test_accepts_bytes_and_arrays():
    path = example_images()[0]
    from_bytes = generate(path.read_bytes(), GenerateOptions(faces=2_000))
    from_array = generate(load_image(path), GenerateOptions(faces=2_000))
    assert len(from_bytes.mesh.faces) == len(from_array.mesh.faces)


def test_options_change_the_result():
    path = example_images()[0]
    coarse = generate(path, GenerateOptions(resolution=64, texture=False))
    assert coarse.mesh.visual.kind == "vertex"
    assert len(coarse.mesh.faces) < 50_000


def test_bad_input_raises_invalid_image():
    with pytest.raises(InvalidImage):
        generate(b"not an image")


def test_library_use_reads_no_orfeas_variables(monkeypatch, tmp_path):
    # each of these would refuse the image or fail the run if the pipeline read the environment
    monkeypatch.setenv("ORFEAS_MAX_IMAGE_PIXELS", "1")
    monkeypatch.setenv("ORFEAS_BACKGROUND_MODEL", str(tmp_path / "missing.onnx"))
    result = generate(example_images()[0], GenerateOptions(resolution=64, faces=2_000))
    assert len(result.mesh.faces) > 0
    with pytest.raises(InvalidImage):
        generate(example_images()[0], settings=PipelineSettings(max_image_pixels=1))
