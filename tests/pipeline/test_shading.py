"""Relief from shading, on meshes of known depth that the test renders itself with one light (tests/synthetic.py)."""

import cv2
import numpy as np
import pytest
import trimesh

from orfeas.evaluation import surface_scores
from orfeas.pipeline.extract import extract_mesh
from orfeas.pipeline.generators.base import GenerationParams
from orfeas.pipeline.generators.inflate import (
    InflateGenerator,
    front_and_back,
    read_options,
    signed_distance_2d,
)
from orfeas.pipeline.shading import (
    Light,
    estimate_light,
    harmonic_fill,
    outline_tilt,
    shading_relief,
    surface_normals,
)
from tests.synthetic import LIGHT, cutout_from_mask, disc_mask, shaded_render

SIZE = 128


def tilted(mesh: trimesh.Trimesh, angle: float, axis: tuple[float, float, float]) -> trimesh.Trimesh:
    mesh = mesh.copy()
    mesh.apply_transform(trimesh.transformations.rotation_matrix(angle, axis))
    return mesh


def front_error(mesh: trimesh.Trimesh, **options) -> float:
    """RMS error of the front depth the prior gives for a shaded render of `mesh`, up to a constant offset."""
    cutout, true_front = shaded_render(mesh, SIZE)
    sdf = cv2.resize(signed_distance_2d(cutout.mask) / SIZE, (SIZE, SIZE))
    front, _ = front_and_back(cutout, sdf, read_options(options))
    seen = np.isfinite(true_front) & (sdf > 0)
    error = (front - true_front)[seen]
    return float(np.sqrt(((error - error.mean()) ** 2).mean()))


def mesh_scores(mesh: trimesh.Trimesh, **options) -> dict[str, float]:
    """Surface scores of the generated mesh against `mesh`, both centred on their bounding boxes (depth offset is
    not something one view can give)."""
    cutout, _ = shaded_render(mesh, SIZE)
    field = InflateGenerator().generate_batch([cutout], GenerationParams(SIZE, options=options))[0]
    generated = extract_mesh(field)
    truth = mesh.copy()
    for m in (generated, truth):
        m.apply_translation(-m.bounds.mean(axis=0))
    return surface_scores(truth, generated, samples=5_000)


def test_light_is_recovered_from_true_normals_despite_the_shadowed_side():
    rng = np.random.default_rng(0)
    normals = rng.normal(size=(2_000, 3))
    normals[:, 2] = np.abs(normals[:, 2])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    direction = np.array(LIGHT) / np.linalg.norm(LIGHT)
    intensity = 40 + 150 * np.maximum(normals @ direction, 0)
    light = estimate_light(normals, intensity)
    assert light.direction == pytest.approx(direction, abs=1e-6)
    assert (light.albedo, light.ambient, light.fit) == pytest.approx((150, 40, 1.0))


def test_light_is_estimated_from_the_silhouette_prior_of_a_shaded_sphere():
    # the tube prior of a sphere's disc is the sphere, so its normals explain the shading
    cutout, _ = shaded_render(trimesh.creation.icosphere(subdivisions=4, radius=0.18), SIZE)
    sdf = cv2.resize(signed_distance_2d(cutout.mask) / SIZE, (SIZE, SIZE))
    front, _ = front_and_back(cutout, sdf, read_options({"shading": 0}))
    inside = cv2.erode(cutout.mask.astype(np.uint8), np.ones((3, 3))) > 0
    normals = surface_normals(front, 1.0 / SIZE)[inside]
    light = estimate_light(normals, cutout.rgba[..., 0][inside].astype(float))
    angle = np.degrees(np.arccos(light.direction @ (np.array(LIGHT) / np.linalg.norm(LIGHT))))
    assert angle < 8
    assert light.fit > 0.9


def test_a_plane_tilted_toward_the_light_is_recovered_from_a_flat_prior():
    n = 48
    mask = np.zeros((n, n), dtype=bool)
    mask[8:40, 8:40] = True
    coords = (np.arange(n) + 0.5) / n - 0.5
    direction = np.array(LIGHT) / np.linalg.norm(LIGHT)
    # slope 0.4 along the light's direction in the image plane
    along = direction[:2] / np.linalg.norm(direction[:2])
    plane = 0.4 * (along[0] * coords[None, :] + along[1] * -coords[:, None])
    intensity = 30 + 200 * np.maximum(surface_normals(plane, 1.0 / n) @ direction, 0)
    relief, fit = shading_relief(np.zeros((n, n)), intensity, mask, 1.0 / n, Light(direction, 200, 30, 1.0), 0.05)
    slope_x = np.gradient(relief, 1.0 / n, axis=1)[mask].mean()
    slope_y = -np.gradient(relief, 1.0 / n, axis=0)[mask].mean()
    assert (slope_x, slope_y) == pytest.approx((0.4 * along[0], 0.4 * along[1]), abs=0.04)
    assert fit > 0.95


def test_harmonic_fill_passes_a_plane_through_its_outline():
    n = 32
    mask = disc_mask(n, radius=0.35)
    rows, cols = np.mgrid[:n, :n]
    plane = (0.3 * cols - 0.1 * rows + 2).astype(np.float32)
    filled = harmonic_fill(np.where(mask, 0, plane), mask)
    assert filled[mask] == pytest.approx(plane[mask], abs=1e-3)


def test_shading_recovers_the_tilt_of_a_torus():
    torus = tilted(trimesh.creation.torus(major_radius=0.3, minor_radius=0.1), 1.0, (1, 0.3, 0))
    # the relief's pull toward zero (shading.RELIEF_ANCHOR) makes a whole-object tilt pay for itself, so less of it
    # is recovered than the shading alone would allow
    assert front_error(torus) < 0.9 * front_error(torus, shading=0)
    with_shading, without = mesh_scores(torus), mesh_scores(torus, shading=0)
    assert with_shading["fscore@0.05"] > without["fscore@0.05"] + 0.05
    assert with_shading["chamfer"] < without["chamfer"]


def test_shading_recovers_a_sphere_deeper_than_the_thickness_cap():
    # the prior alone caps the sphere's depth at max_thickness; its shading says it is round
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.35)
    assert front_error(sphere) < 0.7 * front_error(sphere, shading=0)
    with_shading, without = mesh_scores(sphere), mesh_scores(sphere, shading=0)
    assert with_shading["chamfer"] < without["chamfer"]


def test_shading_recovers_the_tilt_of_a_cube_seen_from_a_corner():
    cube = tilted(tilted(trimesh.creation.box(extents=[0.4, 0.4, 0.4]), 0.6, (1, 0, 0)), 0.5, (0, 1, 0))
    assert front_error(cube) < 0.85 * front_error(cube, shading=0)
    # the back is only mirrored from the front, so the whole mesh gains less than its front (and may lose a little)
    assert mesh_scores(cube)["fscore@0.05"] > mesh_scores(cube, shading=0)["fscore@0.05"] - 0.05


def test_a_shaded_sphere_stays_a_sphere_and_watertight():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.18)
    cutout, _ = shaded_render(sphere, SIZE)
    field = InflateGenerator().generate_batch([cutout], GenerationParams(SIZE))[0]
    mesh = extract_mesh(field)
    assert mesh.is_watertight
    assert mesh.extents == pytest.approx([0.36] * 3, abs=0.03)
    assert mesh_scores(sphere)["fscore@0.05"] > 0.95


def test_a_uniformly_coloured_object_gets_no_relief():
    # no shading to read: the prior alone
    cutout = cutout_from_mask(disc_mask(SIZE, radius=0.3))
    cutout.rgba[..., :3] = np.where(cutout.mask[..., None], 120, 0)
    sdf = cv2.resize(signed_distance_2d(cutout.mask) / SIZE, (SIZE, SIZE))
    shaded = front_and_back(cutout, sdf, read_options({}))
    plain = front_and_back(cutout, sdf, read_options({"shading": 0}))
    assert np.allclose(shaded[0], plain[0]) and np.allclose(shaded[1], plain[1])


def test_outline_tilt_reads_the_lean_of_a_round_outline_only():
    # a flat ring leaning back by 50 degrees (elevation 40): its outline's height is about sin(40) of its width,
    # and its plane's depth changes by about cot(40) per unit of image height (less, as the ring is not flat)
    ring = tilted(trimesh.creation.torus(major_radius=0.35, minor_radius=0.05), 0.87, (1, 0, 0))
    tilt = outline_tilt(shaded_render(ring, SIZE)[0].mask)
    assert 0.65 < tilt.ratio < 0.8 and 0.8 < tilt.slope < 1.2
    # straight edges (a box from the side), a circle (seen along its axis) and a cylinder's visible side: no lean
    box = trimesh.creation.box(extents=[0.8, 0.4, 0.4])
    upright = trimesh.creation.torus(major_radius=0.3, minor_radius=0.1)
    can = tilted(trimesh.creation.cylinder(radius=0.35, height=0.4, sections=64), 0.87, (1, 0, 0))
    for mesh in (box, upright, can):
        assert outline_tilt(shaded_render(mesh, SIZE)[0].mask).slope == 0


@pytest.mark.parametrize("angle", [0.9, -0.9])
def test_a_torus_seen_obliquely_from_above_or_below_is_tilted_the_right_way(angle):
    # the outline gives the lean's size; the shading picks which way it leans
    torus = tilted(trimesh.creation.torus(major_radius=0.3, minor_radius=0.1), angle, (1, 0, 0))
    with_tilt, without = mesh_scores(torus), mesh_scores(torus, tilt=0)
    assert with_tilt["fscore@0.05"] > without["fscore@0.05"] + 0.2
    assert with_tilt["chamfer"] < 0.6 * without["chamfer"]


def test_an_egg_lying_on_its_side_is_not_taken_for_a_tilted_disc():
    # its outline is an ellipse like a leaning ring's, but its front is convex: no ring, no tilt
    egg = trimesh.creation.icosphere(subdivisions=4, radius=1.0).apply_scale([0.45, 0.28, 0.28])
    assert outline_tilt(shaded_render(egg, SIZE)[0].mask).slope > 0
    cutout, _ = shaded_render(egg, SIZE)
    sdf = cv2.resize(signed_distance_2d(cutout.mask) / SIZE, (SIZE, SIZE))
    default, upright = (
        front_and_back(cutout, sdf, read_options({})),
        front_and_back(cutout, sdf, read_options({"tilt": 0})),
    )
    assert np.allclose(default[0], upright[0]) and np.allclose(default[1], upright[1])
    assert mesh_scores(egg)["fscore@0.05"] > 0.9


@pytest.mark.parametrize(
    "options", [{"shading": -0.1}, {"smoothness": 0}, {"back_relief": 2}, {"shading": "x"}, {"tilt": -1}]
)
def test_bad_shading_options_are_refused(options):
    from orfeas.errors import InvalidOptions

    with pytest.raises(InvalidOptions):
        read_options(options)


def mid_surface_bend(mesh: trimesh.Trimesh, **options) -> float:
    """How far the mid-surface between the front and the back strays from a plane along the image's rows: the
    largest deviation (world units) of each row's mean mid-depth from the straight line through them."""
    cutout, _ = shaded_render(mesh, SIZE, light=(0.8, 0.2, 0.55))
    # painted bands across the bottle: a print on the label, which the relief must not read as shading
    bands = 0.75 + 0.25 * ((np.arange(SIZE) // 9) % 2)[:, None]
    cutout.rgba[..., :3] = (cutout.rgba[..., :3] * bands[..., None]).astype(np.uint8)
    sdf = cv2.resize(signed_distance_2d(cutout.mask) / SIZE, (SIZE, SIZE))
    front, back = front_and_back(cutout, sdf, read_options(options))
    inside = sdf > 0
    rows = np.flatnonzero(inside.sum(axis=1) > 4)
    mid = np.array([((front + back) / 2)[r, inside[r]].mean() for r in rows])
    line = np.polyval(np.polyfit(rows, mid, 1), rows)
    return float(np.abs(mid - line).max() + abs(np.polyfit(rows / SIZE, mid, 1)[0]) * 0.7)


def test_a_bottle_like_cylinder_stays_straight():
    bottle = trimesh.creation.cylinder(radius=0.12, height=0.7, sections=64)
    bottle.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0)))  # upright, along Y
    # without the relief's pull toward zero the printed bands bend it into a banana (about 0.3 by this measure)
    assert mid_surface_bend(bottle) < 0.12
    assert mesh_scores(bottle)["fscore@0.05"] > mesh_scores(bottle, shading=0)["fscore@0.05"] - 0.03


def test_a_sphere_lit_from_the_side_stays_a_sphere():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.25)
    cutout, _ = shaded_render(sphere, SIZE, light=(0.95, 0.1, 0.3))
    field = InflateGenerator().generate_batch([cutout], GenerationParams(SIZE))[0]
    mesh = extract_mesh(field)
    assert mesh.is_watertight
    assert mesh.extents == pytest.approx([0.5, 0.5, 0.5], abs=0.04)
    generated = mesh.copy()
    generated.apply_translation(-generated.bounds.mean(axis=0))
    assert surface_scores(sphere, generated, samples=5_000)["fscore@0.05"] > 0.9
