import numpy as np
import trimesh

from orfeas.pipeline.extract import extract_mesh
from orfeas.pipeline.generators.base import GenerationParams
from orfeas.pipeline.generators.inflate import InflateGenerator
from orfeas.pipeline.texture import apply_texture, apply_vertex_colors, fill_background, projected_uv
from tests.synthetic import cutout_from_mask, disc_mask


def test_fill_background_uses_nearest_object_colour():
    cutout = cutout_from_mask(disc_mask(64, radius=0.3))
    filled = fill_background(cutout)
    assert filled.shape == (64, 64, 3)
    # corners are background; they take a colour from the disc, never the black background
    assert (filled[0, 0] > 0).any()
    assert np.array_equal(filled[cutout.mask], cutout.rgba[..., :3][cutout.mask])


def test_uv_is_the_projection_along_z():
    mesh = trimesh.Trimesh(vertices=[[-0.5, -0.5, 0.2], [0.5, 0.5, -0.2], [0.0, 0.25, 0.0]], faces=[[0, 1, 2]])
    assert np.allclose(projected_uv(mesh), [[0, 0], [1, 1], [0.5, 0.75]])


def _disc_mesh(cutout):
    field = InflateGenerator().generate_batch([cutout], GenerationParams(resolution=64))[0]
    return extract_mesh(field)


def test_textured_mesh_has_uvs_and_the_cutout_as_base_colour():
    cutout = cutout_from_mask(disc_mask(128))
    mesh = apply_texture(_disc_mesh(cutout), cutout)
    assert mesh.visual.kind == "texture"
    assert mesh.visual.uv.shape == (len(mesh.vertices), 2)
    texture = np.asarray(mesh.visual.material.baseColorTexture)
    assert texture.shape == (128, 128, 3)


def test_vertex_colours_follow_the_image_left_to_right():
    cutout = cutout_from_mask(disc_mask(128))  # red channel ramps from left to right
    mesh = apply_vertex_colors(_disc_mesh(cutout), cutout)
    colors = mesh.visual.vertex_colors
    left = colors[mesh.vertices[:, 0] < -0.2, 0].mean()
    right = colors[mesh.vertices[:, 0] > 0.2, 0].mean()
    assert right > left + 100
    # front and back of the same point get the same colour (the back mirrors the front)
    assert np.allclose(colors[:, 1], 60) and np.allclose(colors[:, 2], 40)
