"""Silhouette rendering and silhouette IoU against an object mask."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from orfeas.evaluation import crop_to_bbox, render_silhouette, silhouette_iou
from tests.synthetic import disc_mask


def disc_mesh() -> trimesh.Trimesh:
    """A thin cylinder along Z: a disc seen from the camera."""
    return trimesh.creation.cylinder(radius=1.0, height=0.2, sections=128)


def square_mesh() -> trimesh.Trimesh:
    return trimesh.creation.box(extents=(1.0, 1.0, 0.3))


def wedge_mesh() -> trimesh.Trimesh:
    """One triangle, wide at the top (+Y) and on the right (+X), with its apex at the bottom left."""
    vertices = [[-1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, -1.0, 0.0]]
    return trimesh.Trimesh(vertices, [[0, 2, 1]], process=False)


def test_silhouette_is_a_square_bool_image() -> None:
    silhouette = render_silhouette(square_mesh(), 64)
    assert silhouette.shape == (64, 64)
    assert silhouette.dtype == bool
    assert silhouette.mean() > 0.97


def test_silhouette_puts_plus_y_at_the_top_and_plus_x_on_the_right() -> None:
    silhouette = render_silhouette(wedge_mesh(), 64)
    assert silhouette[2].sum() > 55
    assert silhouette[-3].sum() < 8
    assert silhouette[:, -3].sum() > 55
    assert silhouette[:, 2].sum() < 8


def test_silhouette_fills_the_longest_side_within_the_margin() -> None:
    box = trimesh.creation.box(extents=(2.0, 1.0, 1.0))
    silhouette = render_silhouette(box, 100, margin=0.1)
    rows, columns = np.nonzero(silhouette)
    assert 79 <= columns.max() - columns.min() + 1 <= 81
    assert 39 <= rows.max() - rows.min() + 1 <= 41
    assert abs((rows.min() + rows.max()) / 2 - 49.5) <= 1


def test_silhouette_covers_a_closed_mesh_where_faces_overlap() -> None:
    # Front and back faces of a sphere cover each pixel twice; an even-odd fill would leave it hollow.
    silhouette = render_silhouette(trimesh.creation.icosphere(subdivisions=3), 128)
    assert silhouette.mean() == pytest.approx(np.pi / 4, abs=0.02)


def test_crop_to_bbox() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3] = True
    mask[4, 3:9] = True
    cropped = crop_to_bbox(mask)
    assert cropped.shape == (3, 6)
    assert cropped[0, 0] and cropped[2, 5] and not cropped[0, 5]


def test_crop_to_bbox_rejects_an_empty_mask() -> None:
    with pytest.raises(ValueError, match="empty"):
        crop_to_bbox(np.zeros((4, 4), dtype=bool))


def test_a_mesh_matches_its_own_silhouette() -> None:
    box = trimesh.creation.box(extents=(1.0, 2.0, 0.5))
    assert silhouette_iou(box, render_silhouette(box, 300)) > 0.99


def test_disc_mesh_matches_a_disc_mask() -> None:
    assert silhouette_iou(disc_mesh(), disc_mask()) >= 0.97


def test_square_mesh_matches_a_disc_mask_poorly() -> None:
    # The disc inscribed in a square covers pi / 4 of it.
    assert silhouette_iou(square_mesh(), disc_mask()) == pytest.approx(np.pi / 4, abs=0.02)


def test_iou_ignores_placement_and_scale_of_the_mask() -> None:
    small_offset_disc = disc_mask(size=512, radius=0.1, center=(0.2, -0.3))
    assert silhouette_iou(disc_mesh(), small_offset_disc) >= 0.97


def test_mesh_without_faces_scores_zero() -> None:
    empty = trimesh.Trimesh(vertices=np.zeros((0, 3)), faces=np.zeros((0, 3), dtype=int))
    assert silhouette_iou(empty, disc_mask()) == 0.0
