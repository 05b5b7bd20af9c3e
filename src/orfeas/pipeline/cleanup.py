"""Mesh cleanup: drop floaters, keep the winding outward, decimate to a face budget."""

from __future__ import annotations

import fast_simplification
import numpy as np
import trimesh
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from orfeas.pipeline.extract import signed_volume


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
    vertices, faces = fast_simplification.simplify(
        mesh.vertices.astype(np.float32),
        mesh.faces.astype(np.int32),
        target_count=max_faces,
    )
    faces = drop_paired_faces(faces)
    vertices, faces = patch_nonmanifold_edges(vertices.astype(np.float64), faces)
    simplified = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    simplified.remove_unreferenced_vertices()
    return simplified


def drop_paired_faces(faces: np.ndarray) -> np.ndarray:
    """Remove every face that shares its three vertices with another face.

    Edge collapses occasionally fold two triangles onto the same vertices; removing both copies (not just one)
    leaves their neighbours sharing the edges again, so a closed surface stays closed.
    """
    _, inverse, counts = np.unique(np.sort(faces, axis=1), axis=0, return_inverse=True, return_counts=True)
    return faces[counts[inverse.ravel()] == 1]


def patch_nonmanifold_edges(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-close the surface where decimation pinched two sheets together along an edge.

    Quadric collapses do not check topology: where a part is only a few cells thick, front and back can end up
    sharing an edge (four faces on it). The faces around such edges are cut out and each hole is closed again
    with a fan around its centre. Holes whose outline is not a simple loop are left as they are.
    """
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    pinched = np.unique(unique[counts > 2])
    if len(pinched) == 0:
        return vertices, faces
    kept = faces[~np.isin(faces, pinched).any(axis=1)]
    loops = _boundary_loops(kept)
    if loops is None:
        return vertices, faces
    new_vertices, new_faces = [vertices], [kept]
    next_index = len(vertices)
    for loop in loops:
        new_vertices.append(vertices[loop].mean(axis=0, keepdims=True))
        # a kept face runs u -> v along the hole, so the filling face runs v -> u
        new_faces.append(np.column_stack([np.roll(loop, -1), loop, np.full(len(loop), next_index)]))
        next_index += 1
    return np.concatenate(new_vertices), np.concatenate(new_faces)


def _boundary_loops(faces: np.ndarray) -> list[np.ndarray] | None:
    """Directed boundary loops of an open surface, or None when a boundary vertex has two ways out."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    inner = {(int(a), int(b)) for a, b in directed}
    following: dict[int, int] = {}
    for a, b in inner:
        if (b, a) not in inner:
            if a in following:
                return None
            following[a] = b
    loops = []
    while following:
        start, loop = next(iter(following)), []
        vertex = start
        while vertex in following:
            loop.append(vertex)
            vertex = following.pop(vertex)
        if vertex != start:
            return None
        loops.append(np.array(loop))
    return loops


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
