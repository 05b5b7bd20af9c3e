"""Export to GLB, OBJ, STL and PLY: files re-load with the same faces, texture and colours, all or nothing."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from orfeas.errors import InvalidOptions
from orfeas.pipeline.export import export_mesh, to_export_frame
from orfeas.pipeline.options import FORMATS, parse_formats


def tall_box() -> trimesh.Trimesh:
    """A plain box, taller in Y than wide in X and deep in Z, away from the origin."""
    box = trimesh.creation.box(extents=(1.0, 2.0, 0.5))
    box.apply_translation((3.0, -1.0, 0.5))
    return box


def textured_sphere() -> trimesh.Trimesh:
    """An icosphere with planar-projected UVs and a small RGB checker texture on a PBR material."""
    sphere = trimesh.creation.icosphere(subdivisions=2)
    uv = (sphere.vertices[:, :2] + 1.0) / 2.0
    checker = (np.indices((16, 16)).sum(axis=0) % 2).astype(np.uint8)
    pixels = np.stack([checker * 255, np.full_like(checker, 80), (1 - checker) * 255], axis=-1)
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(pixels, "RGB"), metallicFactor=0.0, roughnessFactor=1.0
    )
    sphere.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return sphere


def coloured_sphere() -> trimesh.Trimesh:
    """An icosphere whose vertex colours run from red at the bottom to blue at the top."""
    sphere = trimesh.creation.icosphere(subdivisions=2)
    t = (sphere.vertices[:, 1] + 1.0) / 2.0
    colours = np.column_stack([255 * (1 - t), np.full_like(t, 40), 255 * t, np.full_like(t, 255)])
    sphere.visual.vertex_colors = np.round(colours).astype(np.uint8)
    return sphere


MESHES = {"plain": tall_box, "textured": textured_sphere, "coloured": coloured_sphere}


def glb_json(path: Path) -> dict:
    """The JSON chunk of a GLB file."""
    data = path.read_bytes()
    length, kind = struct.unpack_from("<II", data, 12)
    assert kind == 0x4E4F534A  # "JSON"
    return json.loads(data[20 : 20 + length])


def load_mesh(path: Path) -> trimesh.Trimesh:
    return trimesh.load(path, force="mesh")


@pytest.mark.parametrize("kind", sorted(MESHES))
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reloads_with_the_same_faces(tmp_path: Path, fmt: str, kind: str) -> None:
    mesh = to_export_frame(MESHES[kind]())
    paths = export_mesh(mesh, tmp_path, "model", fmt)
    assert paths[0] == tmp_path / f"model.{fmt}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    assert len(load_mesh(paths[0]).faces) == len(mesh.faces)


def test_to_export_frame_centres_and_scales_a_copy() -> None:
    mesh = textured_sphere()
    mesh.apply_scale((2.0, 1.0, 0.5))
    mesh.apply_translation((4.0, -3.0, 2.0))
    before = mesh.vertices.copy()
    framed = to_export_frame(mesh)
    np.testing.assert_allclose(framed.bounds.mean(axis=0), 0.0, atol=1e-12)
    assert framed.extents.max() == pytest.approx(1.0)
    np.testing.assert_allclose(framed.extents, [1.0, 0.5, 0.25])
    np.testing.assert_array_equal(framed.visual.uv, mesh.visual.uv)
    np.testing.assert_array_equal(mesh.vertices, before)


def test_to_export_frame_rejects_a_flat_point() -> None:
    point = trimesh.Trimesh(vertices=np.zeros((3, 3)), faces=[[0, 1, 2]], process=False)
    with pytest.raises(ValueError, match="longest side"):
        to_export_frame(point)


def test_glb_keeps_y_up_centred_at_unit_size(tmp_path: Path) -> None:
    (path,) = export_mesh(to_export_frame(tall_box()), tmp_path, "box", "glb")
    reloaded = load_mesh(path)
    np.testing.assert_allclose(reloaded.extents, [0.5, 1.0, 0.25], atol=1e-6)
    np.testing.assert_allclose(reloaded.bounds.mean(axis=0), 0.0, atol=1e-6)


def test_glb_embeds_the_texture_as_png_with_uvs(tmp_path: Path) -> None:
    mesh = textured_sphere()
    (path,) = export_mesh(mesh, tmp_path, "sphere", "glb")
    tree = glb_json(path)
    assert tree["images"] == [{"bufferView": tree["images"][0]["bufferView"], "mimeType": "image/png"}]
    assert tree["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"] == {"index": 0}
    assert {"POSITION", "NORMAL", "TEXCOORD_0"} <= set(tree["meshes"][0]["primitives"][0]["attributes"])
    reloaded = load_mesh(path)
    texture = reloaded.visual.material.baseColorTexture
    original = mesh.visual.material.baseColorTexture
    assert texture.size == original.size
    np.testing.assert_array_equal(np.asarray(texture.convert("RGB")), np.asarray(original))


def test_glb_keeps_vertex_colours(tmp_path: Path) -> None:
    mesh = coloured_sphere()
    (path,) = export_mesh(mesh, tmp_path, "sphere", "glb")
    assert "COLOR_0" in glb_json(path)["meshes"][0]["primitives"][0]["attributes"]
    reloaded = trimesh.load(path, force="mesh", process=False)
    np.testing.assert_array_equal(reloaded.visual.vertex_colors, mesh.visual.vertex_colors)


def test_export_does_not_change_the_input(tmp_path: Path) -> None:
    mesh = textured_sphere()
    texture = mesh.visual.material.baseColorTexture
    vertices = mesh.vertices.copy()
    for fmt in FORMATS:
        export_mesh(mesh, tmp_path, "sphere", fmt)
    assert mesh.visual.material.baseColorTexture is texture
    assert mesh.visual.material.name != "sphere_texture"
    np.testing.assert_array_equal(mesh.vertices, vertices)


def test_obj_writes_and_references_its_material_and_texture(tmp_path: Path) -> None:
    paths = export_mesh(textured_sphere(), tmp_path, "sphere", "obj")
    assert [p.name for p in paths] == ["sphere.obj", "sphere.mtl", "sphere_texture.png"]
    assert "mtllib sphere.mtl" in paths[0].read_text()
    assert "map_Kd sphere_texture.png" in paths[1].read_text()
    with Image.open(paths[2]) as texture:
        assert texture.format == "PNG"
        assert texture.size == (16, 16)
    reloaded = load_mesh(paths[0])
    assert isinstance(reloaded.visual, trimesh.visual.TextureVisuals)
    assert reloaded.visual.material.image.size == (16, 16)


def test_obj_without_texture_is_a_single_file(tmp_path: Path) -> None:
    assert [p.name for p in export_mesh(tall_box(), tmp_path, "box", "obj")] == ["box.obj"]


def test_obj_keeps_vertex_colours(tmp_path: Path) -> None:
    mesh = coloured_sphere()
    (path,) = export_mesh(mesh, tmp_path, "sphere", "obj")
    reloaded = trimesh.load(path, force="mesh", process=False)
    np.testing.assert_allclose(reloaded.visual.vertex_colors[:, :3], mesh.visual.vertex_colors[:, :3], atol=1)


def test_stl_is_binary(tmp_path: Path) -> None:
    mesh = tall_box()
    (path,) = export_mesh(mesh, tmp_path, "box", "stl")
    data = path.read_bytes()
    (count,) = struct.unpack_from("<I", data, 80)
    assert count == len(mesh.faces)
    assert len(data) == 84 + 50 * count


def ply_header(path: Path) -> str:
    data = path.read_bytes()
    return data[: data.index(b"end_header")].decode("ascii")


def test_ply_is_binary_with_vertex_colours(tmp_path: Path) -> None:
    mesh = coloured_sphere()
    (path,) = export_mesh(mesh, tmp_path, "sphere", "ply")
    header = ply_header(path)
    assert "format binary_little_endian 1.0" in header
    assert "property uchar red" in header
    reloaded = trimesh.load(path, force="mesh", process=False)
    np.testing.assert_array_equal(reloaded.visual.vertex_colors, mesh.visual.vertex_colors)


def test_ply_bakes_texture_into_vertex_colours(tmp_path: Path) -> None:
    mesh = textured_sphere()
    (path,) = export_mesh(mesh, tmp_path, "sphere", "ply")
    assert "property uchar red" in ply_header(path)
    reloaded = trimesh.load(path, force="mesh", process=False)
    np.testing.assert_array_equal(reloaded.visual.vertex_colors, mesh.visual.to_color().vertex_colors)


def test_plain_ply_has_no_colours(tmp_path: Path) -> None:
    (path,) = export_mesh(tall_box(), tmp_path, "box", "ply")
    assert "red" not in ply_header(path)


def test_export_replaces_an_earlier_file(tmp_path: Path) -> None:
    (tmp_path / "box.stl").write_bytes(b"old")
    (path,) = export_mesh(tall_box(), tmp_path, "box", "stl")
    assert path.stat().st_size == 84 + 50 * 12


@pytest.mark.parametrize("fmt", ["fbx", "", "glb,obj"])
def test_unknown_format_is_rejected(tmp_path: Path, fmt: str) -> None:
    with pytest.raises(InvalidOptions, match="glb, obj, stl, ply"):
        export_mesh(tall_box(), tmp_path, "box", fmt)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stem", ["", "../escape", "a/b", ".hidden", "two words"])
def test_unsafe_stem_is_rejected(tmp_path: Path, stem: str) -> None:
    with pytest.raises(ValueError, match="stem"):
        export_mesh(tall_box(), tmp_path, stem, "stl")


def test_failing_encoder_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_export(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(trimesh.exchange.obj, "export_obj", broken_export)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_mesh(textured_sphere(), tmp_path, "sphere", "obj")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failing_call", [1, 2, 3])
def test_failing_move_leaves_no_file_of_that_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_call: int
) -> None:
    real_replace = os.replace
    calls = []

    def flaky_replace(source: Path, target: Path) -> None:
        calls.append(target)
        if len(calls) == failing_call:
            raise OSError("no space left on device")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError, match="no space"):
        export_mesh(textured_sphere(), tmp_path, "sphere", "obj")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("glb", ("glb",)),
        ("glb,obj", ("glb", "obj")),
        (" GLB , obj,glb, ", ("glb", "obj")),
        (["ply", "stl,GLB"], ("ply", "stl", "glb")),
        (("glb", "glb"), ("glb",)),
    ],
)
def test_parse_formats(text: str | list[str], expected: tuple[str, ...]) -> None:
    assert parse_formats(text) == expected


@pytest.mark.parametrize("text", ["", " , ", [], "glb,fbx", ["obj", "gltf"]])
def test_parse_formats_rejects_empty_and_unknown(text: str | list[str]) -> None:
    with pytest.raises(InvalidOptions, match="glb, obj, stl, ply"):
        parse_formats(text)
