import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from orfeas.pipeline.extract import (
    ExtractionStats,
    _all_cells,
    _children_near_surface,
    _close_surface,
    _inside_bits,
    _Samples,
    _straddles,
    extract_neural_field,
    torch_field,
)

BOUNDS = ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
RESOLUTION = 128
VOXEL = 1.0 / RESOLUTION


def sphere(center=(0.0, 0.0, 0.0), radius=0.3):
    return lambda p: np.linalg.norm(p - np.asarray(center), axis=1) - radius


def box(center=(0.0, 0.0, 0.0), half=(0.2, 0.2, 0.2)):
    def sdf(p):
        q = np.abs(p - np.asarray(center)) - np.asarray(half)
        return np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(axis=1), 0.0)

    return sdf


def torus(major=0.3, minor=0.08):
    return lambda p: np.hypot(np.hypot(p[:, 0], p[:, 1]) - major, p[:, 2]) - minor


def union(*parts):
    return lambda p: np.min([part(p) for part in parts], axis=0)


# (field, connected components). The plate is 0.02 thick and sits between the planes of a coarse 16^3 grid
# (z = 0 and z = 0.0625), so no coarse corner is inside it: only the distance band can find it.
FIELDS = {
    "sphere": (sphere(), 1),
    "torus": (torus(), 1),
    "thin plate": (box(center=(0.0, 0.0, 0.03), half=(0.3, 0.3, 0.01)), 1),
    "two spheres": (union(sphere((-0.25, 0, 0), 0.15), sphere((0.25, 0, 0), 0.15)), 2),
    "parts": (
        union(
            box((0, -0.2, 0), (0.3, 0.05, 0.3)),
            sphere((0, -0.05, 0), 0.15),
            torus(0.3, 0.04),
            sphere((0.35, 0.35, 0.35), 0.06),
        ),
        2,
    ),
}


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric mean nearest-neighbour distance between two point sets."""
    return 0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def components(mesh) -> int:
    return len(mesh.split(only_watertight=False))


def open_edges(mesh) -> int:
    """Edges used by one face only: the rim of a hole (0 for a closed mesh)."""
    edges = np.sort(mesh.edges, axis=1)
    _, counts = np.unique(edges[:, 0].astype(np.int64) * len(mesh.vertices) + edges[:, 1], return_counts=True)
    return int((counts == 1).sum())


def warped(sdf, amplitude=0.6):
    """A field with the zero set of `sdf` but far from a distance: its gradient swings between 0.4 and 1.6."""
    return lambda p: sdf(p) * (1.0 + amplitude * np.sin(9.0 * p[:, 0]) * np.cos(7.0 * p[:, 1]))


@pytest.fixture(scope="module")
def dense_meshes():
    return {
        name: extract_neural_field(field, BOUNDS, RESOLUTION, method="dense") for name, (field, _) in FIELDS.items()
    }


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize("coarse", [16, 32])
def test_hierarchical_matches_dense_with_far_fewer_queries(name, coarse, dense_meshes):
    field, expected_components = FIELDS[name]
    dense, dense_stats = dense_meshes[name]
    mesh, stats = extract_neural_field(field, BOUNDS, RESOLUTION, coarse_resolution=coarse)
    assert chamfer(mesh.vertices, dense.vertices) <= 0.25 * VOXEL
    assert components(mesh) == components(dense) == expected_components
    assert open_edges(mesh) == open_edges(dense) == 0
    assert len(mesh.faces) == len(dense.faces)
    assert dense_stats.queries == (RESOLUTION + 1) ** 3
    assert stats.queries <= dense_stats.queries / 5
    assert (stats.method, stats.resolution) == ("hierarchical", RESOLUTION)


@pytest.mark.parametrize("name", ["sphere", "torus", "parts"])
@pytest.mark.parametrize("band", [0.25, 0.87])
def test_narrow_band_on_a_field_far_from_a_distance_leaves_no_holes(name, band):
    # the band test misjudges where the surface is wherever the gradient is not 1, so refinement alone would miss
    # cells that hold surface; following the surface out of the refined cells closes those holes
    field = warped(FIELDS[name][0])
    dense, _ = extract_neural_field(field, BOUNDS, RESOLUTION, method="dense")
    mesh, _ = extract_neural_field(field, BOUNDS, RESOLUTION, coarse_resolution=16, band=band)
    assert open_edges(dense) == open_edges(mesh) == 0
    assert (len(mesh.faces), components(mesh)) == (len(dense.faces), components(dense))
    assert chamfer(mesh.vertices, dense.vertices) < 1e-6


def test_surface_cut_by_the_box_is_open_where_dense_is_open():
    # the sphere pokes out of the box: both meshes end at the box with the same rim, and following the surface
    # stops there instead of stepping off the grid
    field = sphere(center=(0.42, 0.0, 0.0), radius=0.2)
    dense, _ = extract_neural_field(field, BOUNDS, RESOLUTION, method="dense")
    mesh, _ = extract_neural_field(field, BOUNDS, RESOLUTION, coarse_resolution=16, band=0.25)
    assert open_edges(dense) > 0
    assert (open_edges(mesh), len(mesh.faces)) == (open_edges(dense), len(dense.faces))
    assert chamfer(mesh.vertices, dense.vertices) < 1e-6


def test_a_straddling_cell_keeps_two_children_when_the_band_keeps_none():
    # corner values far beyond the band: the nearest inside corner is 1 (-2), the nearest outside one 0 (3)
    corners = np.array([[3.0, -2.0, 4.0, 5.0, -7.0, 6.0, -9.0, 8.0]], dtype=np.float32)
    assert np.flatnonzero(_children_near_surface(corners, band=0.0)[0]).tolist() == [0, 1]
    # a cell that does not straddle the level keeps none
    assert not _children_near_surface(np.abs(corners), band=0.0).any()


def test_close_surface_completes_a_partial_shell():
    size = 32
    samples = _Samples(
        sphere(radius=0.3), np.full(3, -0.5), np.full(3, 1 / size), size + 1, 4096, 0.0, ExtractionStats()
    )
    cells = _all_cells(size)
    corners = samples.at(cells, 1)
    shell = cells[_straddles(_inside_bits(corners))]
    # keep a cap of the shell only (z > 0.7 of the grid): the rest must be followed from its open rim
    cap = shell[:, 2] > 0.7 * size
    found, found_corners = _close_surface(shell[cap], samples.at(shell[cap], 1), size, 1, samples)
    assert found.shape == shell.shape
    assert set(map(tuple, found)) == set(map(tuple, shell))
    assert _straddles(_inside_bits(found_corners)).all()


def test_thin_plate_is_kept_in_full():
    field, _ = FIELDS["thin plate"]
    mesh, _ = extract_neural_field(field, BOUNDS, RESOLUTION, coarse_resolution=16)
    assert np.allclose(mesh.extents, (0.6, 0.6, 0.02), atol=2 * VOXEL)


def test_sign_test_alone_loses_the_thin_plate():
    field, _ = FIELDS["thin plate"]
    with pytest.raises(ValueError, match="no surface"):
        extract_neural_field(field, BOUNDS, RESOLUTION, coarse_resolution=16, band=0.0)


def test_level_and_non_cubic_bounds():
    bounds = ((-0.5, -0.3, -0.2), (0.5, 0.3, 0.2))
    mesh, _ = extract_neural_field(sphere(radius=0.1), bounds, 64, coarse_resolution=16, level=0.05)
    assert np.allclose(np.linalg.norm(mesh.vertices, axis=1), 0.15, atol=0.01)
    dense, _ = extract_neural_field(sphere(radius=0.1), bounds, 64, method="dense", level=0.05)
    assert chamfer(mesh.vertices, dense.vertices) < 1e-6


class TinyMLP(torch.nn.Module):
    """An MLP whose zero set is close to a sphere: the sphere's SDF plus a small random perturbation."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def forward(self, points):
        return points.norm(dim=1, keepdim=True) - 0.3 + 0.01 * self.net(points)


def test_torch_module_is_wrapped_and_counted():
    mesh, stats = extract_neural_field(torch_field(TinyMLP()), BOUNDS, 64, chunk_size=5000, coarse_resolution=16)
    assert mesh.is_watertight
    assert np.allclose(np.linalg.norm(mesh.vertices, axis=1), 0.3, atol=0.02)
    assert stats.queries >= 17**3
    assert stats.chunks >= stats.queries / 5000
    assert stats.seconds > 0


@pytest.mark.parametrize("method", ["dense", "hierarchical"])
def test_chunk_size_is_respected(method):
    calls = ExtractionStats()

    def field(points):
        assert points.shape[1] == 3 and 0 < len(points) <= 1000
        assert points.dtype == np.float32
        calls.queries += len(points)
        calls.chunks += 1
        return sphere()(points)

    _, stats = extract_neural_field(field, BOUNDS, 64, method=method, chunk_size=1000, coarse_resolution=16)
    assert (stats.queries, stats.chunks) == (calls.queries, calls.chunks)
    assert stats.chunks >= stats.queries / 1000


@pytest.mark.parametrize(("resolution", "coarse"), [(100, 32), (48, 32), (16, 32), (0, 32)])
def test_resolution_that_is_not_a_power_of_two_multiple_is_refused(resolution, coarse):
    with pytest.raises(ValueError, match="resolution"):
        extract_neural_field(sphere(), BOUNDS, resolution, coarse_resolution=coarse)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method"):
        extract_neural_field(sphere(), BOUNDS, 32, method="octree")


@pytest.mark.parametrize(
    ("resolution", "coarse"), [(64, 32), (100, 25), (384, 24), (48, 24), (70, 35), (40, 20), (97, 97)]
)
def test_coarse_resolution_is_chosen_when_not_given(resolution, coarse):
    field = sphere() if resolution < 384 else box(half=(0.4, 0.4, 0.4))
    _, stats = extract_neural_field(field, BOUNDS, resolution)
    assert stats.coarse_resolution == coarse
