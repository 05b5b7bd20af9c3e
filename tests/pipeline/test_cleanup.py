import numpy as np
import trimesh

from orfeas.pipeline.cleanup import (
    clean_mesh,
    decimate,
    drop_paired_faces,
    orient_outward,
    patch_nonmanifold_edges,
    remove_floaters,
)


def test_small_floater_is_dropped_and_large_parts_are_kept():
    big = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    other_big = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    other_big.apply_translation([3, 0, 0])
    speck = trimesh.creation.icosphere(subdivisions=0, radius=0.05)
    speck.apply_translation([0, 3, 0])
    mesh = trimesh.util.concatenate([big, other_big, speck])
    cleaned = remove_floaters(mesh)
    assert len(cleaned.faces) == len(big.faces) + len(other_big.faces)
    assert cleaned.vertices[:, 1].max() < 1.5


def test_decimation_meets_budget_and_keeps_a_closed_surface():
    sphere = trimesh.creation.icosphere(subdivisions=6)  # 81,920 faces
    result = decimate(sphere, 5_000)
    assert len(result.faces) <= 5_000
    assert len(result.faces) > 4_000
    assert result.is_watertight
    assert abs(result.volume - sphere.volume) / sphere.volume < 0.02


def test_mesh_under_budget_is_unchanged():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    assert decimate(sphere, 10_000) is sphere


def test_inside_out_mesh_is_flipped():
    box = trimesh.creation.box()
    box.invert()
    assert box.volume < 0
    assert orient_outward(box).volume > 0


def test_clean_mesh_runs_all_steps():
    sphere = trimesh.creation.icosphere(subdivisions=5)
    speck = trimesh.creation.icosphere(subdivisions=0, radius=0.01)
    speck.apply_translation([5, 0, 0])
    cleaned = clean_mesh(trimesh.util.concatenate([sphere, speck]), max_faces=2_000)
    assert len(cleaned.faces) <= 2_000
    assert cleaned.is_watertight and cleaned.volume > 0
    assert np.abs(cleaned.vertices).max() < 1.1


def _spheres_pinched_along_an_edge() -> trimesh.Trimesh:
    """Two closed spheres glued at one edge, so that edge has four faces (what a decimator can leave)."""
    a = trimesh.creation.icosphere(subdivisions=2)
    b = trimesh.creation.icosphere(subdivisions=2)
    a0, a1 = a.faces[0, :2]
    b0, b1 = b.faces[0, :2]
    b.apply_translation(a.vertices[a0] - b.vertices[b0])
    offset = len(a.vertices)
    b_faces = b.faces + offset
    b_faces[b.faces == b0] = a0
    b_faces[b.faces == b1] = a1
    return trimesh.Trimesh(np.vstack([a.vertices, b.vertices]), np.vstack([a.faces, b_faces]), process=False)


def test_pinched_edge_is_cut_out_and_both_sheets_are_closed_again():
    pinched = _spheres_pinched_along_an_edge()
    assert not pinched.is_watertight
    vertices, faces = patch_nonmanifold_edges(pinched.vertices, pinched.faces)
    repaired = trimesh.Trimesh(vertices, faces, process=False)
    repaired.remove_unreferenced_vertices()
    assert repaired.is_watertight and repaired.is_winding_consistent
    assert len(repaired.split(only_watertight=True)) == 2


def test_closed_mesh_is_left_alone_by_the_patch():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    _, faces = patch_nonmanifold_edges(sphere.vertices, sphere.faces)
    assert np.array_equal(faces, sphere.faces)


def test_both_copies_of_a_doubled_face_are_dropped():
    faces = np.array([[0, 1, 2], [2, 1, 0], [1, 2, 3], [0, 3, 1]])
    assert drop_paired_faces(faces).tolist() == [[1, 2, 3], [0, 3, 1]]
