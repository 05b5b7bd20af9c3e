"""The evaluation corpus: cut-out and shape cases with known truth, built deterministically from a seed.

    .venv/bin/python bench/corpus.py [--seed 0] [--out bench/.corpus]

Cut-outs: every RGBA object of ../shared/rgba/ and the RGBA images of ../shared/images/, composited onto studio-style
backgrounds (plain white, off-white, grey, dark, saturated and pastel colours, vertical and radial gradients, floor,
cast and contact shadows, a sweep with a shadow), with a little noise and vignetting, saved as JPEG at quality
70-90; the truth is the object's alpha (a shadow is background).

Shapes: the meshes of ../shared/meshes/ and ../shared/gt/placed/, turned to a view (front, turned, seen from above),
centred and scaled so that their longest X/Y side is 1 (as ../shared/gt/placed/ is), and rendered orthographically
by `render_mesh` under one lighting (one light from a random direction, three-point studio light, glossy
highlights, a painted albedo); the truth is the placed mesh.

Each object is in exactly one part: *tuning* or *check*. Objects the team has tuned on before (../shared/gt and
../shared/images) are always in the tuning part; the others are split by a seeded shuffle. The corpus is written
under `--out/seed-N/` with a manifest.json; it is rebuilt only when the builder's source or the seed changes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import trimesh
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_OUT = REPO / "bench" / ".corpus"
RGBA_DIR = SHARED / "rgba"
IMAGES_DIR = SHARED / "images"
MESHES_DIR = SHARED / "meshes"
PLACED_DIR = SHARED / "gt" / "placed"

BACKGROUNDS = (
    "white",
    "off_white",
    "grey",
    "dark",
    "saturated",
    "pastel",
    "vertical_gradient",
    "radial_gradient",
    "floor_shadow",
    "contact_shadow",
    "sweep_shadow",
)
VIEWS = ("front", "turned", "above")
LIGHTINGS = ("key", "three_point", "glossy", "textured")
# Shape cases per object: every view, each under two of the four lightings (rotating over the objects).
LIGHTINGS_PER_VIEW = 2
# Share of the new (never tuned on) objects that join the tuning part; the rest form the check part.
NEW_OBJECTS_IN_TUNING = {"cutout": 8 / 21, "shape": 3 / 10}
RENDER_SIZE = 512
RENDER_MARGIN = 0.05  # as ../shared/gt/images: the placed mesh's longest X/Y side spans 90 % of the render
SUPERSAMPLE = 2


@dataclass(frozen=True)
class Case:
    """One test case: `image` (relative to the corpus folder) and its truth (`truth`: a mask PNG or a mesh PLY)."""

    kind: str  # "cutout" or "shape"
    id: str
    object: str
    split: str  # "tuning" or "check"
    variant: str  # background kind (cut-outs) or "view/lighting" (shapes)
    image: str
    truth: str


# ---------------------------------------------------------------------------------------------------------------
# Objects and the split


def cutout_objects() -> dict[str, Path]:
    """Name -> RGBA file of every object with a true alpha."""
    objects = {p.stem: p for p in sorted(RGBA_DIR.glob("*.png"))}
    for path in sorted(IMAGES_DIR.glob("*.png")):
        if Image.open(path).mode == "RGBA":
            objects[f"images_{path.stem}"] = path
    return objects


def shape_objects() -> dict[str, Path]:
    """Name -> mesh file of every shape with known geometry."""
    objects = {f"gt_{p.stem}": p for p in sorted(PLACED_DIR.glob("*.ply"))}
    for path in sorted(MESHES_DIR.iterdir()):
        if path.suffix.lower() in {".obj", ".stl", ".ply", ".off", ".glb"}:
            objects[f"mesh_{path.stem}"] = path
    return objects


def split_objects(names: list[str], seen: set[str], share_new_in_tuning: float, seed: int) -> dict[str, str]:
    """Object -> "tuning" or "check": objects in `seen` go to tuning, the rest are shuffled by the seed and split."""
    new = sorted(set(names) - seen)
    order = np.random.default_rng(seed).permutation(len(new))
    tuning_new = {new[i] for i in order[: round(share_new_in_tuning * len(new))]}
    return {name: "tuning" if name in seen or name in tuning_new else "check" for name in names}


def case_rng(seed: int, *parts: str) -> np.random.Generator:
    """A generator that depends only on the seed and the case's name, so adding objects moves no other case."""
    return np.random.default_rng([seed, zlib.crc32("/".join(parts).encode())])


# ---------------------------------------------------------------------------------------------------------------
# Cut-out composites


def load_rgba(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"))


def place_object(rgba: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The object's premultiplied RGB (float, 0-1) and alpha on a canvas of `shape`, scaled and shifted at random
    with a margin of at least 6 % of the short side on every side (and room below it for a floor shadow)."""
    alpha = rgba[..., 3]
    rows = np.flatnonzero((alpha >= 8).any(axis=1))
    cols = np.flatnonzero((alpha >= 8).any(axis=0))
    crop = rgba[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32) / 255.0
    height, width = shape
    short = min(shape)
    extent = rng.uniform(0.55, 0.8) * short
    scale = extent / max(crop.shape[:2])
    new_h, new_w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    new_h, new_w = min(new_h, int(height * 0.86)), min(new_w, int(width * 0.86))
    premultiplied = crop[..., :3] * crop[..., 3:]
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    premultiplied = cv2.resize(premultiplied, (new_w, new_h), interpolation=interpolation)
    object_alpha = cv2.resize(crop[..., 3], (new_w, new_h), interpolation=interpolation)
    pad = round(0.06 * short)
    top = int(rng.integers(pad, max(pad + 1, height - new_h - int(1.6 * pad))))
    left = int(rng.integers(pad, max(pad + 1, width - new_w - pad)))
    canvas_rgb = np.zeros((height, width, 3), np.float32)
    canvas_alpha = np.zeros((height, width), np.float32)
    canvas_rgb[top : top + new_h, left : left + new_w] = premultiplied
    canvas_alpha[top : top + new_h, left : left + new_w] = object_alpha
    return canvas_rgb, np.clip(canvas_alpha, 0.0, 1.0)


def hsv_colour(hue: float, saturation: float, value: float) -> np.ndarray:
    pixel = np.uint8([[[round(hue * 179), round(saturation * 255), round(value * 255)]]])
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0


def plain(shape: tuple[int, int], colour: np.ndarray) -> np.ndarray:
    return np.broadcast_to(colour, (*shape, 3)).astype(np.float32).copy()


def vertical_gradient(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A studio sweep: light at one end, dark at the other, with a slight tint and a random midpoint."""
    tint = hsv_colour(rng.uniform(0, 1), rng.uniform(0.0, 0.15), 1.0)
    light, dark = rng.uniform(0.8, 0.98), rng.uniform(0.15, 0.45)
    t = np.linspace(0.0, 1.0, shape[0])[:, None]
    t = t ** rng.uniform(0.6, 1.6)
    if rng.random() < 0.5:
        t = 1.0 - t
    level = light + (dark - light) * t
    return (np.broadcast_to(level[..., None], (*shape, 1)) * tint).astype(np.float32) * np.ones((1, shape[1], 1))


def radial_gradient(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A spot on the backdrop: bright round a point near the middle, darker toward the corners."""
    tint = hsv_colour(rng.uniform(0, 1), rng.uniform(0.0, 0.3), 1.0)
    height, width = shape
    cy, cx = height * rng.uniform(0.3, 0.7), width * rng.uniform(0.3, 0.7)
    r = np.hypot(*np.mgrid[0:height, 0:width] - np.array([cy, cx])[:, None, None]) / np.hypot(height, width)
    centre, edge = rng.uniform(0.8, 1.0), rng.uniform(0.25, 0.6)
    level = edge + (centre - edge) * np.exp(-((r / rng.uniform(0.3, 0.6)) ** 2))
    return (level[..., None] * tint).astype(np.float32)


def light_backdrop(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A plain light backdrop for the shadow cases: white, off-white, light grey or pastel."""
    choice = rng.integers(4)
    if choice == 0:
        return plain(shape, np.full(3, rng.uniform(0.94, 1.0), np.float32))
    if choice == 1:
        return plain(shape, hsv_colour(rng.uniform(0.05, 0.15), rng.uniform(0.03, 0.1), rng.uniform(0.9, 0.97)))
    if choice == 2:
        return plain(shape, np.full(3, rng.uniform(0.6, 0.85), np.float32))
    return plain(shape, hsv_colour(rng.uniform(0, 1), rng.uniform(0.15, 0.3), rng.uniform(0.85, 0.97)))


def floor_shadow(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shadow strength (0-1) of a soft shadow on the floor: an ellipse under the object or its cast silhouette."""
    height, width = alpha.shape
    rows = np.flatnonzero((alpha > 0.5).any(axis=1))
    cols = np.flatnonzero((alpha > 0.5).any(axis=0))
    bottom, obj_h, obj_w = rows[-1], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    centre_x = (cols[0] + cols[-1]) / 2 + rng.uniform(-0.15, 0.15) * obj_w
    strength = np.zeros(alpha.shape, np.float32)
    if rng.random() < 0.5:
        axes = (int(rng.uniform(0.35, 0.6) * obj_w), max(2, int(rng.uniform(0.04, 0.1) * obj_h)))
        cv2.ellipse(strength, (int(centre_x), int(bottom)), axes, 0, 0, 360, 1.0, -1)
    else:
        # the silhouette laid down on the floor behind the object, squashed and sheared by a low light
        squash, shear = rng.uniform(0.15, 0.35), rng.uniform(-0.8, 0.8)
        matrix = np.float32([[1, shear * squash, -shear * squash * bottom], [0, -squash, (1 + squash) * bottom]])
        strength = cv2.warpAffine((alpha > 0.5).astype(np.float32), matrix, (width, height))
    blur = rng.uniform(0.02, 0.05) * max(obj_h, obj_w)
    strength = cv2.GaussianBlur(strength, (0, 0), blur)
    return strength / max(float(strength.max()), 1e-6) * rng.uniform(0.35, 0.65)


def contact_shadow(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shadow strength of a dark, tight contact shadow where the object's lowest parts meet the floor."""
    rows = np.flatnonzero((alpha > 0.5).any(axis=1))
    obj_h = rows[-1] - rows[0] + 1
    base = np.zeros_like(alpha)
    band = max(2, int(0.06 * obj_h))
    base[rows[-1] - band : rows[-1] + 1] = alpha[rows[-1] - band : rows[-1] + 1] > 0.5
    spread = max(3, int(rng.uniform(0.02, 0.05) * obj_h))
    base = cv2.dilate(base, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3 * spread, spread)))
    strength = cv2.GaussianBlur(base, (0, 0), spread / 2)
    return strength / max(float(strength.max()), 1e-6) * rng.uniform(0.5, 0.8)


def background_for(kind: str, alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The backdrop (float RGB, 0-1) of one background kind, shadows included, before the object is laid on it."""
    shape = alpha.shape
    if kind == "white":
        return plain(shape, np.full(3, rng.uniform(0.97, 1.0), np.float32))
    if kind == "off_white":
        return plain(shape, hsv_colour(rng.uniform(0.05, 0.6), rng.uniform(0.03, 0.1), rng.uniform(0.88, 0.96)))
    if kind == "grey":
        return plain(shape, np.full(3, rng.uniform(0.4, 0.6), np.float32))
    if kind == "dark":
        return plain(shape, hsv_colour(rng.uniform(0, 1), rng.uniform(0, 0.3), rng.uniform(0.05, 0.2)))
    if kind == "saturated":
        return plain(shape, hsv_colour(rng.uniform(0, 1), rng.uniform(0.7, 1.0), rng.uniform(0.6, 0.95)))
    if kind == "pastel":
        return plain(shape, hsv_colour(rng.uniform(0, 1), rng.uniform(0.15, 0.35), rng.uniform(0.85, 0.97)))
    if kind == "vertical_gradient":
        return vertical_gradient(shape, rng)
    if kind == "radial_gradient":
        return radial_gradient(shape, rng)
    if kind == "floor_shadow":
        return light_backdrop(shape, rng) * (1.0 - floor_shadow(alpha, rng))[..., None]
    if kind == "contact_shadow":
        return light_backdrop(shape, rng) * (1.0 - contact_shadow(alpha, rng))[..., None]
    if kind == "sweep_shadow":
        sweep = vertical_gradient(shape, rng)
        return sweep * (1.0 - np.maximum(floor_shadow(alpha, rng), contact_shadow(alpha, rng)))[..., None]
    raise ValueError(f"unknown background kind {kind!r}")


def photo_effects(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A little sensor noise and, half the time, vignetting."""
    height, width = rgb.shape[:2]
    if rng.random() < 0.5:
        r = np.hypot(*(np.mgrid[0:height, 0:width] - np.array([height / 2, width / 2])[:, None, None]))
        rgb = rgb * (1.0 - rng.uniform(0.03, 0.12) * (r / r.max()) ** 2)[..., None]
    return rgb + rng.normal(0.0, rng.uniform(0.0, 4.0) / 255.0, rgb.shape).astype(np.float32)


def composite_case(rgba: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 photo of the object on a backdrop of `kind`, and the truth mask (alpha >= 0.5)."""
    shape = [(512, 512), (480, 640), (640, 480)][int(rng.integers(3))]
    premultiplied, alpha = place_object(rgba, shape, rng)
    backdrop = background_for(kind, alpha, rng)
    rgb = premultiplied + backdrop * (1.0 - alpha[..., None])
    rgb = photo_effects(rgb, rng)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8), alpha >= 0.5


# ---------------------------------------------------------------------------------------------------------------
# Shape renders


def load_mesh(path: Path) -> trimesh.Trimesh:
    scene = trimesh.load(path, force="scene")
    mesh = scene.to_geometry() if hasattr(scene, "to_geometry") else scene.dump(concatenate=True)
    return trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)


def upright(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A mesh whose longest side points at the camera (Z) is stood up, that side along Y."""
    extents = mesh.extents
    if int(np.argmax(extents)) == 2 and extents[2] > 1.05 * extents[1]:
        mesh = mesh.copy()
        mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, (1, 0, 0)))
    return mesh


def view_rotation(view: str, rng: np.random.Generator) -> np.ndarray:
    """Rotation (4x4) that turns a mesh to one view: as it stands, turned about Y, or tipped toward the camera."""
    if view == "front":
        return np.eye(4)
    if view == "turned":
        angle = np.radians(rng.uniform(35, 60)) * rng.choice([-1, 1])
        return trimesh.transformations.rotation_matrix(angle, (0, 1, 0))
    if view == "above":
        pitch = trimesh.transformations.rotation_matrix(np.radians(rng.uniform(25, 45)), (1, 0, 0))
        yaw = trimesh.transformations.rotation_matrix(np.radians(rng.uniform(-25, 25)), (0, 1, 0))
        return pitch @ yaw
    raise ValueError(f"unknown view {view!r}")


def place_mesh(mesh: trimesh.Trimesh, rotation: np.ndarray) -> trimesh.Trimesh:
    """The mesh turned by `rotation`, centred on its bounding box, its longest X/Y side scaled to 1."""
    mesh = mesh.copy()
    mesh.apply_transform(rotation)
    low, high = mesh.bounds
    mesh.apply_translation(-(low + high) / 2)
    mesh.apply_scale(1.0 / float((high - low)[:2].max()))
    return mesh


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def random_direction(rng: np.random.Generator, low: float = 20, high: float = 65) -> np.ndarray:
    """A light direction toward the camera side, `low`-`high` degrees off the view axis, from any side."""
    polar, azimuth = np.radians(rng.uniform(low, high)), rng.uniform(0, 2 * np.pi)
    return np.array([np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)])


def painted_albedo(centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-face colours of a painted object: stripes along a random direction or patches round random points."""
    colours = np.array([hsv_colour(rng.uniform(0, 1), rng.uniform(0.2, 0.9), rng.uniform(0.4, 1.0)) for _ in range(4)])
    if rng.random() < 0.5:
        along = centres @ unit(rng.normal(size=3))
        index = np.floor(along * rng.uniform(3, 8)).astype(int) % len(colours)
    else:
        seeds = rng.uniform(-0.5, 0.5, (10, 3))
        index = np.argmin(((centres[:, None] - seeds[None]) ** 2).sum(-1), axis=1) % len(colours)
    return colours[index]


def face_colours(mesh: trimesh.Trimesh, lighting: str, rng: np.random.Generator) -> np.ndarray:
    """Float RGB (0-1) per face under one lighting; two-sided, so the inside of an open mesh is lit too."""
    normals = mesh.face_normals.copy()
    normals[normals[:, 2] < 0] *= -1
    base = hsv_colour(rng.uniform(0, 1), rng.uniform(0.0, 0.6), rng.uniform(0.6, 0.95))
    albedo = np.broadcast_to(base, normals.shape).copy()
    ambient = rng.uniform(0.1, 0.3)
    specular = np.zeros(len(normals))
    if lighting in ("key", "textured", "glossy"):
        shade = ambient + (1.0 - ambient) * np.maximum(normals @ random_direction(rng), 0)
        if lighting == "textured":
            albedo = painted_albedo(mesh.triangles_center, rng)
        if lighting == "glossy":
            half = unit(random_direction(rng) + np.array([0.0, 0.0, 1.0]))
            specular = rng.uniform(0.3, 0.6) * np.maximum(normals @ half, 0) ** rng.uniform(20, 80)
    elif lighting == "three_point":
        key = random_direction(rng, 30, 60)
        fill = unit([-key[0], -key[1] * 0.3, 1.0])
        rim = unit([rng.uniform(-0.5, 0.5), 1.0, -0.6])
        lights = 0.75 * np.maximum(normals @ key, 0) + 0.3 * np.maximum(normals @ fill, 0)
        shade = ambient + (1.0 - ambient) * (lights + 0.4 * np.maximum(normals @ rim, 0))
    else:
        raise ValueError(f"unknown lighting {lighting!r}")
    return np.clip(albedo * np.clip(shade, 0, 1.2)[:, None] + specular[:, None], 0.0, 1.0)


def render_mesh(mesh: trimesh.Trimesh, colours: np.ndarray, size: int = RENDER_SIZE) -> np.ndarray:
    """Orthographic RGBA render from +Z of a placed mesh (longest X/Y side 1) with `RENDER_MARGIN` around it.

    Faces are filled back to front (painter's algorithm) in their flat colour at `SUPERSAMPLE` times the size and
    averaged down, so the outline is anti-aliased; colour is straight (not premultiplied) alpha.
    """
    big = size * SUPERSAMPLE
    scale = big * (1.0 - 2.0 * RENDER_MARGIN)
    triangles = mesh.triangles
    pixels = np.empty((*triangles.shape[:2], 2))
    pixels[..., 0] = triangles[..., 0] * scale + big / 2
    pixels[..., 1] = big / 2 - triangles[..., 1] * scale
    points = np.round(pixels * 16).astype(np.int32)
    image = np.zeros((big, big, 4), np.uint8)
    paint = np.rint(colours * 255).astype(int)
    for index in np.argsort(triangles[..., 2].mean(axis=1)):
        r, g, b = paint[index]
        cv2.fillConvexPoly(image, points[index], (int(r), int(g), int(b), 255), lineType=cv2.LINE_8, shift=4)
    small = cv2.resize(image.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    alpha = small[..., 3:] / 255.0
    rgb = np.divide(small[..., :3], alpha, out=np.zeros_like(small[..., :3]), where=alpha > 0)
    return np.dstack([rgb, small[..., 3:]]).clip(0, 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Building


def builder_version() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def build_cutouts(folder: Path, seed: int) -> list[Case]:
    objects = cutout_objects()
    seen = {name for name in objects if name.startswith("images_")}
    split = split_objects(list(objects), seen, NEW_OBJECTS_IN_TUNING["cutout"], seed)
    (folder / "cutouts").mkdir(parents=True, exist_ok=True)
    cases = []
    for name, path in objects.items():
        rgba = load_rgba(path)
        for kind in BACKGROUNDS:
            rng = case_rng(seed, "cutout", name, kind)
            rgb, truth = composite_case(rgba, kind, rng)
            case_id = f"{name}__{kind}"
            image, mask = f"cutouts/{case_id}.jpg", f"cutouts/{case_id}.truth.png"
            Image.fromarray(rgb).save(folder / image, quality=int(rng.integers(70, 91)))
            Image.fromarray(truth.astype(np.uint8) * 255).save(folder / mask)
            cases.append(Case("cutout", case_id, name, split[name], kind, image, mask))
    return cases


def build_shapes(folder: Path, seed: int) -> list[Case]:
    objects = shape_objects()
    seen = {name for name in objects if name.startswith("gt_")}
    split = split_objects(list(objects), seen, NEW_OBJECTS_IN_TUNING["shape"], seed)
    (folder / "shapes").mkdir(parents=True, exist_ok=True)
    cases = []
    for number, (name, path) in enumerate(objects.items()):
        mesh = upright(load_mesh(path))
        for view_number, view in enumerate(VIEWS):
            placed = place_mesh(mesh, view_rotation(view, case_rng(seed, "view", name, view)))
            truth = f"shapes/{name}__{view}.ply"
            placed.export(folder / truth)
            first = (number + view_number) % len(LIGHTINGS)
            for step in range(LIGHTINGS_PER_VIEW):
                lighting = LIGHTINGS[(first + step * len(LIGHTINGS) // LIGHTINGS_PER_VIEW) % len(LIGHTINGS)]
                rng = case_rng(seed, "light", name, view, lighting)
                rgba = render_mesh(placed, face_colours(placed, lighting, rng))
                case_id = f"{name}__{view}__{lighting}"
                image = f"shapes/{case_id}.png"
                Image.fromarray(rgba).save(folder / image)
                cases.append(Case("shape", case_id, name, split[name], f"{view}/{lighting}", image, truth))
    return cases


def build_corpus(out: Path = DEFAULT_OUT, seed: int = 0) -> tuple[Path, list[Case]]:
    """Build (or reuse) the corpus for `seed` under `out`; returns its folder and its cases."""
    folder = out / f"seed-{seed}"
    manifest = folder / "manifest.json"
    version = builder_version()
    if manifest.exists():
        stored = json.loads(manifest.read_text())
        if stored.get("version") == version:
            return folder, [Case(**case) for case in stored["cases"]]
    folder.mkdir(parents=True, exist_ok=True)
    # generated images stay out of git: some sources may be read but not redistributed (../shared/meshes/README.md)
    (out / ".gitignore").write_text("*\n")
    cases = build_cutouts(folder, seed) + build_shapes(folder, seed)
    manifest.write_text(json.dumps({"version": version, "seed": seed, "cases": [asdict(c) for c in cases]}, indent=1))
    return folder, cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    folder, cases = build_corpus(args.out, args.seed)
    for kind in ("cutout", "shape"):
        for part in ("tuning", "check"):
            chosen = [c for c in cases if c.kind == kind and c.split == part]
            objects = sorted({c.object for c in chosen})
            print(f"{kind} {part}: {len(chosen)} cases, {len(objects)} objects: {', '.join(objects)}")
    print(f"corpus in {folder}")


if __name__ == "__main__":
    main()
