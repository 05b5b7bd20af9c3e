import numpy as np
import trimesh

from orfeas.pipeline.preview import face_base_colors, render_preview


def test_a_box_is_drawn_in_the_middle_on_the_background():
    image = render_preview(trimesh.creation.box(), size=64, yaw_degrees=0, pitch_degrees=0)
    assert image.shape == (64, 64, 3)
    assert (image[0, 0] == 245).all()  # corner: background
    assert (image[32, 32] != 245).any()  # centre: the box


def test_faces_turned_toward_the_light_are_brighter():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    image = render_preview(sphere, size=64, yaw_degrees=0, pitch_degrees=0).astype(int).sum(axis=2)
    # light comes from the upper left
    assert image[20, 20] > image[44, 44]


def test_vertex_colours_are_used():
    box = trimesh.creation.box()
    box.visual.vertex_colors = [255, 0, 0, 255]
    assert np.allclose(face_base_colors(box), [255, 0, 0])
    image = render_preview(box, size=32, yaw_degrees=0, pitch_degrees=0)
    red, green = image[16, 16, 0], image[16, 16, 1]
    assert red > 100 and green < 30
