"""The inflate prior on shapes whose depth is known: the test renders each mesh's silhouette itself."""

import numpy as np
import pytest
import trimesh

from orfeas.errors import InvalidOptions
from orfeas.evaluation import render_silhouette, surface_scores
from orfeas.pipeline.extract import extract_mesh
from orfeas.pipeline.generators import Generator
from orfeas.pipeline.generators.base import GenerationParams
from orfeas.pipeline.generators.inflate import (
    InflateGenerator,
    half_thickness,
    height_map,
    local_radius,
    read_options,
    signed_distance_2d,
)
from tests.synthetic import cutout_from_mask, disc_mask

SIZE = 256


def inflate(mask: np.ndarray, resolution: int = 128, **options) -> trimesh.Trimesh:
    cutout = cutout_from_mask(mask)
    field = InflateGenerator().generate_batch([cutout], GenerationParams(resolution, options=options))[0]
    return extract_mesh(field)


def seen_from_the_camera(mesh: trimesh.Trimesh) -> np.ndarray:
    """The mesh's silhouette as a cut-out mask; the mesh must fit in [-0.5, 0.5]."""
    # specks at opposite corners make the rendered frame span exactly the cut-out
    specks = [trimesh.creation.box(extents=[1e-4] * 3) for _ in range(2)]
    specks[0].apply_translation([-0.5, -0.5, 0])
    specks[1].apply_translation([0.5, 0.5, 0])
    return render_silhouette(trimesh.util.concatenate([mesh, *specks]), SIZE)


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


def test_local_radius_is_the_largest_inscribed_disc_covering_each_cell():
    # a fat disc (radius 40) joined to a thin bar (half-width 5)
    mask = disc_mask(SIZE, radius=40 / SIZE, center=(-0.2, 0.0))
    coords = np.arange(SIZE) - SIZE / 2 + 0.5
    mask |= (np.abs(coords)[:, None] < 5) & (coords[None, :] > -0.2 * SIZE) & (coords[None, :] < 100)
    radius = local_radius(np.clip(signed_distance_2d(mask), 0, None), levels=40)
    centre = (SIZE // 2, int(SIZE / 2 - 0.2 * SIZE))
    assert radius[centre] == pytest.approx(40, abs=1.5)
    assert radius[SIZE // 2, SIZE // 2 + 80] == pytest.approx(5, abs=1.0)
    assert (radius[~mask] == 0).all()


def test_round_and_chamfer_profiles():
    distance = np.array([0.0, 0.5, 1.0, 2.0])
    radius = np.full(4, 1.0)
    round_ = half_thickness(distance, radius, depth=1.0, roundness=1.0)
    chamfer = half_thickness(distance, radius, depth=1.0, roundness=0.0)
    assert round_ == pytest.approx([0.0, np.sqrt(0.75), 1.0, 1.0])
    assert chamfer == pytest.approx([0.0, 0.5, 1.0, 1.0])


def test_a_sphere_is_recovered_from_its_disc():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.18)
    mesh = inflate(seen_from_the_camera(sphere), resolution=128, shading=0)
    assert mesh.is_watertight
    assert mesh.extents == pytest.approx([0.36] * 3, abs=0.02)
    scores = surface_scores(sphere, mesh, samples=5_000)
    assert scores["chamfer"] < 0.006
    assert scores["fscore@0.05"] > 0.98


def test_a_torus_seen_from_above_keeps_its_hole_and_tube():
    torus = trimesh.creation.torus(major_radius=0.3, minor_radius=0.08)
    mesh = inflate(seen_from_the_camera(torus), resolution=160, shading=0)
    assert mesh.is_watertight
    assert mesh.euler_number == 0  # genus one
    assert mesh.extents[2] == pytest.approx(0.16, abs=0.015)
    assert surface_scores(torus, mesh, samples=5_000)["chamfer"] < 0.01


def test_a_box_gets_the_depth_of_its_width_capped_by_max_thickness():
    cube = trimesh.creation.box(extents=[0.3, 0.3, 0.3])
    mesh = inflate(seen_from_the_camera(cube), shading=0)
    assert mesh.extents == pytest.approx([0.3, 0.3, 0.3], abs=0.02)
    # a pillow, not a cube, but far closer to it than a thin slab
    assert surface_scores(cube, mesh, samples=5_000)["fscore@0.05"] > 0.8
    capped = inflate(seen_from_the_camera(cube), max_thickness=0.1, shading=0)
    assert capped.extents[2] == pytest.approx(0.1, abs=0.01)


def test_thin_parts_stay_thin():
    mask = disc_mask(SIZE, radius=0.3)
    coords = (np.arange(SIZE) + 0.5) / SIZE - 0.5
    stick = (np.abs(coords)[:, None] < 0.02) & (coords[None, :] > 0.25) & (coords[None, :] < 0.48)
    mesh = inflate(mask | stick, shading=0)
    on_stick = mesh.vertices[:, 0] > 0.35
    assert np.ptp(mesh.vertices[on_stick, 2]) < 0.06
    assert mesh.vertices[:, 0].max() > 0.46  # the stick survives to its tip


def test_every_inside_cell_is_at_least_a_cell_deep():
    # thinner than that, marching cubes can miss a part entirely (a flamingo's legs at grid 192)
    mask = disc_mask(128, radius=0.3)
    mask[62:64, 64:126] = True  # a two-pixel stick
    sdf = signed_distance_2d(mask) / 128
    height = height_map(sdf, read_options({}))
    assert height[mask].min() >= 1.0 / 128
    assert (height[~mask] <= 0).all()


def test_depth_scales_the_thickness():
    disc = disc_mask(SIZE, radius=0.15)
    assert inflate(disc, depth=0.5, shading=0).extents[2] == pytest.approx(0.15, abs=0.015)


def test_field_is_negative_inside_and_positive_outside(disc_cutout):
    field = InflateGenerator().generate_batch([disc_cutout], GenerationParams(resolution=64))[0]
    values = field.values
    assert values[tuple(n // 2 for n in values.shape)] < 0
    assert (values[0] > 0).all() and (values[-1] > 0).all()


def test_batch_returns_one_field_per_image_in_order():
    small, large = disc_mask(128, radius=0.2), disc_mask(128, radius=0.45)
    fields = InflateGenerator().generate_batch(
        [cutout_from_mask(small), cutout_from_mask(large)], GenerationParams(resolution=64)
    )
    assert len(fields) == 2
    assert extract_mesh(fields[0]).extents[0] < extract_mesh(fields[1]).extents[0]


@pytest.mark.parametrize(
    "options",
    [{"depth": 0}, {"depth": -1}, {"max_thickness": 0}, {"roundness": 2}, {"depth": "deep"}, {"colour": 1}],
)
def test_bad_options_are_refused(disc_cutout, options):
    with pytest.raises(InvalidOptions):
        InflateGenerator().generate_batch([disc_cutout], GenerationParams(64, options=options))


def test_memory_estimate_grows_with_resolution():
    generator = InflateGenerator()
    assert generator.memory_per_image(GenerationParams(512)) > generator.memory_per_image(GenerationParams(256))
