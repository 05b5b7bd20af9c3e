import numpy as np
import pytest

from orfeas.errors import InvalidOptions
from orfeas.pipeline.extract import extract_mesh
from orfeas.pipeline.generators import Generator
from orfeas.pipeline.generators.base import GenerationParams
from orfeas.pipeline.generators.inflate import InflateGenerator, rim_profile, signed_distance_2d
from tests.synthetic import cutout_from_mask, disc_mask


def _mesh(mask, resolution=96, **options):
    cutout = cutout_from_mask(mask)
    field = InflateGenerator().generate_batch([cutout], GenerationParams(resolution, options=options))[0]
    return field, extract_mesh(field)


def test_is_a_generator():
    assert isinstance(InflateGenerator(), Generator)


def test_signed_distance_is_positive_inside_and_half_a_pixel_at_the_outline():
    mask = np.zeros((9, 9), dtype=bool)
    mask[2:7, 2:7] = True
    sd = signed_distance_2d(mask)
    assert sd[4, 4] == pytest.approx(2.5)
    assert sd[2, 4] == pytest.approx(0.5)
    assert sd[1, 4] == pytest.approx(-0.5)
    assert sd[0, 0] < -1


def test_rim_profile_rises_to_half_thickness_and_is_continuous_at_the_outline():
    d = np.array([-0.1, 0.0, 0.05, 0.1, 0.5])
    h = rim_profile(d, half_thickness=0.15, rim=0.1)
    assert h[0] == pytest.approx(-0.1)
    assert h[1] == pytest.approx(0.0)
    assert 0 < h[2] < 0.15
    assert h[3] == pytest.approx(0.15) and h[4] == pytest.approx(0.15)


def test_field_is_negative_inside_and_positive_outside(disc_cutout):
    field = InflateGenerator().generate_batch([disc_cutout], GenerationParams(resolution=64))[0]
    values = field.values
    centre = tuple(n // 2 for n in values.shape)
    assert values[centre] < 0
    assert (values[0] > 0).all() and (values[-1] > 0).all()


def test_disc_becomes_a_closed_slab_of_the_requested_thickness():
    _, mesh = _mesh(disc_mask(256, radius=0.4), thickness=0.3, rim=0.1)
    assert mesh.is_watertight
    extent = mesh.extents
    assert extent[0] == pytest.approx(0.8, abs=0.02)
    assert extent[1] == pytest.approx(0.8, abs=0.02)
    assert extent[2] == pytest.approx(0.3, abs=0.02)
    # symmetric about the image plane
    assert mesh.bounds[0, 2] == pytest.approx(-mesh.bounds[1, 2], abs=0.01)


def test_thin_parts_stay_thin():
    mask = disc_mask(256, radius=0.3)
    coords = (np.arange(256) + 0.5) / 256 - 0.5
    stick = (np.abs(coords)[:, None] < 0.02) & (coords[None, :] > 0.25) & (coords[None, :] < 0.48)
    _, mesh = _mesh(mask | stick, thickness=0.3, rim=0.12)
    on_stick = mesh.vertices[:, 0] > 0.35
    assert np.ptp(mesh.vertices[on_stick, 2]) < 0.2
    assert mesh.extents[2] == pytest.approx(0.3, abs=0.02)


def test_a_ring_keeps_its_hole():
    ring = disc_mask(256, radius=0.4) & ~disc_mask(256, radius=0.2)
    _, mesh = _mesh(ring)
    assert mesh.is_watertight
    assert mesh.euler_number == 0  # genus one: a torus, not a filled disc


def test_batch_returns_one_field_per_image_in_order():
    small, large = disc_mask(128, radius=0.2), disc_mask(128, radius=0.45)
    fields = InflateGenerator().generate_batch(
        [cutout_from_mask(small), cutout_from_mask(large)], GenerationParams(resolution=64)
    )
    assert len(fields) == 2
    assert extract_mesh(fields[0]).extents[0] < extract_mesh(fields[1]).extents[0]


@pytest.mark.parametrize(
    "options", [{"thickness": 0}, {"thickness": -1}, {"rim": 0}, {"thickness": "thick"}, {"colour": 1}]
)
def test_bad_options_are_refused(disc_cutout, options):
    with pytest.raises(InvalidOptions):
        InflateGenerator().generate_batch([disc_cutout], GenerationParams(64, options=options))


def test_memory_estimate_grows_with_resolution():
    generator = InflateGenerator()
    assert generator.memory_per_image(GenerationParams(512)) > generator.memory_per_image(GenerationParams(256))
