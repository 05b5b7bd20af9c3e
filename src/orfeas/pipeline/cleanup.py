"""Mesh cleanup: drop floaters, keep the winding outward, decimate to a face budget."""

from __future__ import annotations

import logging

import fast_simplification
import numpy as np
import trimesh
from scipy import sparse
from scipy.sparse.csgraph import connected_components

logger = logging.getLogger(__name__)


def remove_floaters(mesh: trimesh.Trimesh, min_fraction: float = 0.02) -> trimesh.Trimesh:
    """Drop connected pieces with fewer than `min_fraction` of the largest piece's faces."""
    labels = _face_components(mesh)
    counts = np.bincount(labels)
    if len(counts) <= 1:
        return mesh
    keep = counts[labels] >= min_fraction * counts.max()
    if keep.all():
        return mesh
    kept = mesh.submesh([np.flatnonzero(keep)], append=True)
    assert isinstance(kept, trimesh.Trimesh)  # append=True joins the pieces into one mesh
    return kept


def _face_components(mesh: trimesh.Trimesh) -> np.ndarray:
    """Component label per face; faces sharing a vertex are connected (cheaper than edge adjacency)."""
    faces = mesh.faces
    n_vertices = len(mesh.vertices)
    rows = np.concatenate([faces[:, 0], faces[:, 1]])
    cols = np.concatenate([faces[:, 1], faces[:, 2]])
    graph = sparse.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_vertices, n_vertices))
    _, vertex_labels = connected_components(graph, directed=False)
    return vertex_labels[faces[:, 0]]


def decimate(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """Quadric decimation down to at most `max_faces` faces; meshes under budget come back unchanged."""
    if len(mesh.faces) <= max_faces:
        return mesh
    vertices: np.ndarray = mesh.vertices
    faces: np.ndarray = mesh.faces
    target = max_faces
    # Repairs add a few faces back, and one call stops short of very small budgets (a 400k-face mesh to 2k):
    # aim lower and go again on the now small mesh.
    for _ in range(6):
        vertices, faces = fast_simplification.simplify(
            vertices.astype(np.float32), faces.astype(np.int32), target_count=target
        )
        vertices, faces = patch_nonmanifold_edges(vertices.astype(np.float64), drop_paired_faces(faces))
        if len(faces) <= max_faces:
            break
        target = int(target * max_faces / len(faces))
    else:
        logger.warning(
            "decimation stopped at %d faces, above the budget of %d (from %d); a lower resolution reaches it",
            len(faces),
            max_faces,
            len(mesh.faces),
        )
    simplified = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    simplified.remove_unreferenced_vertices()
    return simplified


def drop_paired_faces(faces: np.ndarray) -> np.ndarray:
    """Remove every face that shares its three vertices with another face.

    Edge collapses occasionally fold two triangles onto the same vertices; removing both copies (not just one)
    leaves their neighbours sharing the edges again, so a closed surface stays closed.
    """
    rows = np.sort(faces, axis=1)
    n = int(faces.max()) + 1 if len(faces) else 1
    key = _row_keys(rows[:, :2], n) * n + rows[:, 2]
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    return faces[counts[inverse] == 1]


def _row_keys(pairs: np.ndarray, n: int) -> np.ndarray:
    """One int64 per (a, b) row with 0 <= a, b < n: 1-D unique is several times faster than unique(axis=0)."""
    return pairs[:, 0].astype(np.int64) * n + pairs[:, 1]


def patch_nonmanifold_edges(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-close the surface where decimation pinched two sheets together along an edge.

    Quadric collapses do not check topology: where a part is only a few cells thick, front and back can end up
    sharing an edge (four faces on it). The faces around such edges are cut out and each hole is closed again
    with a fan around its centre. Holes whose outline is not a simple loop are left as they are.
    """
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    keys, counts = np.unique(_row_keys(edges, len(vertices)), return_counts=True)
    pinched = np.unique(np.divmod(keys[counts > 2], len(vertices)))
    if len(pinched) == 0:
        return vertices, faces
    # where two holes touch at a vertex the outline is not a simple loop: cut one ring wider and try again
    for _ in range(4):
        kept = faces[~np.isin(faces, pinched).any(axis=1)]
        loops, branching = _boundary_loops(kept)
        if not branching:
            break
        pinched = np.union1d(pinched, branching)
    else:
        return vertices, faces
    new_vertices, new_faces = [vertices], [kept]
    next_index = len(vertices)
    for loop in loops:
        new_vertices.append(vertices[loop].mean(axis=0, keepdims=True))
        # a kept face runs u -> v along the hole, so the filling face runs v -> u
        new_faces.append(np.column_stack([np.roll(loop, -1), loop, np.full(len(loop), next_index)]))
        next_index += 1
    return np.concatenate(new_vertices), np.concatenate(new_faces)


def _boundary_loops(faces: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
    """Directed boundary loops of an open surface, and the boundary vertices with more than one way out."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    n = int(faces.max()) + 1
    open_edges = directed[~np.isin(_row_keys(directed, n), _row_keys(directed[:, ::-1], n))]
    starts, counts = np.unique(open_edges[:, 0], return_counts=True)
    if (counts > 1).any():
        return [], starts[counts > 1].tolist()
    following = {int(a): int(b) for a, b in open_edges}
    loops = []
    while following:
        start = next(iter(following))
        loop, vertex = [], start
        while vertex in following:
            loop.append(vertex)
            vertex = following.pop(vertex)
        loops.append(np.array(loop))
    return loops, []


def orient_outward(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Make the winding consistent and the normals point out of the volume."""
    if not mesh.is_winding_consistent:
        trimesh.repair.fix_winding(mesh)
    if mesh.is_watertight and signed_volume(mesh) < 0:
        mesh.invert()
    return mesh


def clean_mesh(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """The cleanup stage: decimated to budget, floaters out, outward-facing.

    Decimating first makes the component search run on the small mesh; floaters are tiny, so the few faces the
    decimator spends on them hardly matter.
    """
    return orient_outward(remove_floaters(decimate(mesh, max_faces)))


def signed_volume(mesh: trimesh.Trimesh) -> float:
    """Enclosed volume by the divergence theorem; negative when the faces point inward."""
    a, b, c = (mesh.vertices[mesh.faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->", a, np.cross(b, c)) / 6.0)
