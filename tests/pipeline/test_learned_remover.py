"""The ONNX background remover, with tiny models the tests build (same input and output shapes as the real ones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from orfeas import GenerateOptions, PipelineSettings, generate
from orfeas.errors import GeneratorUnavailable
from orfeas.pipeline.background import remove_background
from orfeas.pipeline.learned_remover import (
    FAMILIES,
    OnnxRemover,
    create_remover,
    find_background_model,
    remover_name,
)


def darkness_model(path: Path, side: int) -> Path:
    """A model with a real family's shapes, (1, 3, side, side) -> (1, 1, side, side), whose "saliency" is how dark
    a pixel is: minus the sum of its normalised channels. A dark object on a light backdrop comes out as object."""
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, side, side])
    mask = helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, side, side])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("ReduceSum", ["input.1", "axes"], ["total"], keepdims=1),
        helper.make_node("Neg", ["total"], ["mask"]),
    ]
    graph = helper.make_graph(nodes, "darkness", [image], [mask], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def dark_disc(shape=(240, 300)) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    disc = (rows - 120) ** 2 + (cols - 150) ** 2 < 70**2
    rgb = np.full((*shape, 3), 235, dtype=np.uint8)
    rgb[disc] = (40, 50, 60)
    return rgb, disc


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize(
    ("file_name", "side", "family"),
    [
        ("u2net.onnx", 320, "u2net"),
        ("u2netp.onnx", 320, "u2netp"),
        ("isnet-general-use.onnx", 1024, "isnet"),
        ("BiRefNet-general-epoch_244.onnx", 1024, "birefnet"),
    ],
)
def test_each_family_runs_at_its_input_size_and_finds_the_object(tmp_path, file_name, side, family):
    remover = OnnxRemover(darkness_model(tmp_path / file_name, side))
    rgb, disc = dark_disc()

    alpha, method = remove_background(rgb, remover)

    assert remover.family.name == family
    assert method == f"onnx:{family}"
    assert alpha.shape == disc.shape and alpha.dtype == np.float32
    assert iou(alpha >= 0.5, disc) > 0.97


def test_input_is_normalised_as_the_family_expects(tmp_path):
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    u2net = OnnxRemover(darkness_model(tmp_path / "u2net.onnx", 320)).preprocess(rgb)
    isnet = OnnxRemover(darkness_model(tmp_path / "isnet-general-use.onnx", 1024)).preprocess(rgb)
    assert u2net.shape == (1, 3, 320, 320) and isnet.shape == (1, 3, 1024, 1024)
    scaled = np.array([1.0, 0.5, 0.25])  # divided by the brightest value, as rembg does
    imagenet = (scaled - FAMILIES["u2net"].mean) / FAMILIES["u2net"].std
    np.testing.assert_allclose(u2net[0, :, 5, 5], imagenet, rtol=1e-5)
    np.testing.assert_allclose(isnet[0, :, 5, 5], scaled - 0.5, rtol=1e-5)


def test_birefnet_logits_go_through_a_sigmoid(tmp_path):
    remover = OnnxRemover(darkness_model(tmp_path / "birefnet.onnx", 1024))
    logits = np.array([[-20.0, 0.0], [0.0, 20.0]], dtype=np.float32)
    alpha = remover.postprocess(logits[None, None], (2, 2))
    np.testing.assert_allclose(alpha, [[0.0, 0.5], [0.5, 1.0]], atol=1e-6)


def test_a_real_alpha_mask_still_wins(tmp_path):
    remover = OnnxRemover(darkness_model(tmp_path / "u2netp.onnx", 320))
    rgb, disc = dark_disc()
    rgba = np.dstack([rgb, np.where(~disc, 255, 0).astype(np.uint8)])  # the alpha says the opposite
    alpha, method = remove_background(rgba, remover)
    assert method == "alpha"
    np.testing.assert_array_equal(alpha >= 0.5, ~disc)


def test_the_model_is_found_in_u2net_home_and_named(tmp_path):
    environ = {"U2NET_HOME": str(tmp_path)}
    assert find_background_model(PipelineSettings(), environ) is None
    assert remover_name(PipelineSettings(), environ) == "grabcut (weight-free)"
    assert create_remover(PipelineSettings(), environ) is None
    darkness_model(tmp_path / "u2netp.onnx", 320)
    assert find_background_model(PipelineSettings(), environ) == tmp_path / "u2netp.onnx"
    darkness_model(tmp_path / "u2net.onnx", 320)
    assert find_background_model(PipelineSettings(), environ) == tmp_path / "u2net.onnx"  # rembg's default first
    assert remover_name(PipelineSettings(), environ) == "onnx:u2net (u2net.onnx)"
    assert create_remover(PipelineSettings(), environ).name == "onnx:u2net"
    # 'none' turns the learned remover off even when one is on disk
    assert find_background_model(PipelineSettings(background_model="none"), environ) is None


def test_a_configured_model_that_is_missing_or_unreadable_is_a_clear_error(tmp_path):
    with pytest.raises(GeneratorUnavailable, match="not a file"):
        find_background_model(PipelineSettings(background_model=tmp_path / "u2net.onnx"))
    (tmp_path / "u2net.onnx").write_bytes(b"not a model")
    with pytest.raises(GeneratorUnavailable, match="cannot be loaded"):
        create_remover(PipelineSettings(background_model=tmp_path / "u2net.onnx"))
    darkness_model(tmp_path / "segmenter.onnx", 320)
    with pytest.raises(GeneratorUnavailable, match="family"):
        create_remover(PipelineSettings(background_model=tmp_path / "segmenter.onnx"))


def test_the_pipeline_uses_the_configured_model(tmp_path):
    model = darkness_model(tmp_path / "u2netp.onnx", 320)
    rgb, _ = dark_disc()
    result = generate(rgb, GenerateOptions(faces=2_000, texture=False), PipelineSettings(background_model=model))
    assert result.cutout.method == "onnx:u2netp"
    assert result.report()["background"] == "onnx:u2netp"
    assert result.mesh.is_watertight
