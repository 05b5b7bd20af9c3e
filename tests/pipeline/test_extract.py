import numpy as np
import pytest

from orfeas.pipeline.extract import extract_mesh
from orfeas.pipeline.generators import GridField


def sphere_field(radius: float = 0.3, n: int = 48, inside_negative: bool = True) -> GridField:
    spacing = 1.0 / n
    coords = (np.arange(n) - (n - 1) / 2) * spacing
    x, y, z = np.meshgrid(coords, coords, coords, indexing="ij")
    values = np.sqrt(x**2 + y**2 + z**2) - radius
    origin = (float(coords[0]),) * 3
    return GridField(values=values.astype(np.float32), origin=origin, spacing=spacing)


def test_sphere_is_watertight_outward_and_in_world_units():
    mesh = extract_mesh(sphere_field(radius=0.3))
    assert mesh.is_watertight
    assert mesh.volume > 0
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.allclose(radii, 0.3, atol=1.0 / 48)
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 0.3**3, rel=0.05)


def test_offset_origin_moves_the_mesh():
    field = sphere_field()
    moved = GridField(field.values, origin=tuple(o + 1.0 for o in field.origin), spacing=field.spacing)
    assert np.allclose(extract_mesh(moved).centroid, extract_mesh(field).centroid + 1.0, atol=1e-6)


@pytest.mark.parametrize("fill", [-1.0, 1.0])
def test_field_without_surface_is_refused(fill):
    field = GridField(np.full((8, 8, 8), fill, dtype=np.float32), origin=(0, 0, 0), spacing=0.1)
    with pytest.raises(ValueError, match="no surface"):
        extract_mesh(field)


def test_field_must_be_3d():
    with pytest.raises(ValueError):
        GridField(np.zeros((4, 4)), origin=(0, 0, 0), spacing=1.0)
