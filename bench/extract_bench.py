"""Mesh extraction for neural fields: dense grid queries against coarse-to-fine refinement near the surface.

    .venv/bin/python bench/extract_bench.py [--write docs/BENCHMARKS.md]

A small MLP signed distance field (positional encoding, 3 hidden layers of 128) is fitted on the CPU to
../shared/gt/placed/busted.ply scaled into [-0.45, 0.45]^3, then meshed at 128, 256 and 384 with both methods of
`orfeas.pipeline.extract.extract_neural_field`, 8000 points per chunk as in the brief. Chamfer is the symmetric mean
vertex-to-nearest-vertex distance between the two meshes of a resolution, in voxels (1 voxel = 1 / resolution);
open edges are edges of one face only (the rims of holes). Each extraction runs `--repeat` times, the two methods
alternating, and the fastest run of each is reported, so that a burst of load from other jobs on a shared machine
does not land on one method only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from orfeas.pipeline.extract import BAND, ExtractionStats, FieldFunction, extract_neural_field, torch_field
from report import write_section

REPO = Path(__file__).resolve().parents[1]
MESH = REPO.parent / "shared" / "gt" / "placed" / "busted.ply"
MARKER = "extract-bench"
HEADING = "Mesh extraction for neural fields"
BOUNDS = ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
RESOLUTIONS = (128, 256, 384)
CHUNK = 8000
BRIEF_DENSE_QUERIES = 385**3


class SDFNet(torch.nn.Module):
    """A signed distance MLP: Fourier features of the point, then 3 hidden layers of 128.

    ReLU rather than softplus: softplus is about 30 times slower on the CPU and would dominate the dense timings.
    """

    def __init__(self, frequencies: int = 4, hidden: int = 128) -> None:
        super().__init__()
        self.register_buffer("scales", np.pi * 2.0 ** torch.arange(frequencies, dtype=torch.float32))
        width = 3 + 6 * frequencies
        self.net = torch.nn.Sequential(
            torch.nn.Linear(width, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, 1),
        )

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        angles = (points[:, :, None] * self.scales).flatten(1)
        return self.net(torch.cat([points, angles.sin(), angles.cos()], dim=1)).squeeze(1)


def load_normalised(path: Path) -> trimesh.Trimesh:
    """The mesh centred on its bounding box with its longest side scaled to 0.9."""
    mesh = trimesh.load(path, force="mesh")
    mesh.apply_translation(-mesh.bounds.mean(axis=0))
    mesh.apply_scale(0.9 / mesh.extents.max())
    return mesh


def training_samples(mesh: trimesh.Trimesh, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points near the surface (two noise scales) and uniform in the bounds, with signed distances, negative inside.

    trimesh's signed distance is positive inside and slow (about half a millisecond a point), so it runs once here.
    """
    rng = np.random.default_rng(seed)
    surface = mesh.sample(count // 3 * 2, seed=seed)
    noise = rng.normal(size=surface.shape) * np.repeat([[0.005], [0.03]], len(surface) // 2 + 1, axis=0)[: len(surface)]
    points = np.concatenate([surface + noise, rng.uniform(-0.5, 0.5, size=(count - len(surface), 3))])
    distances = -trimesh.proximity.ProximityQuery(mesh).signed_distance(points)
    return points.astype(np.float32), distances.astype(np.float32)


def fit_sdf(points: np.ndarray, distances: np.ndarray, steps: int, seed: int = 0) -> SDFNet:
    """Adam on the L1 error of clamped distances (the far field matters only for its sign)."""
    torch.manual_seed(seed)
    model = SDFNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    x, y = torch.from_numpy(points), torch.from_numpy(distances).clamp(-0.1, 0.1)
    for _ in range(steps):
        batch = torch.randint(len(x), (4096,))
        loss = (model(x[batch]).clamp(-0.1, 0.1) - y[batch]).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    return model.eval()


def chamfer_voxels(a: trimesh.Trimesh, b: trimesh.Trimesh, resolution: int) -> float:
    """Symmetric mean nearest-vertex distance between two meshes, in voxels of a resolution^3 grid over BOUNDS."""
    mean = 0.5 * (cKDTree(b.vertices).query(a.vertices)[0].mean() + cKDTree(a.vertices).query(b.vertices)[0].mean())
    return float(mean * resolution)


def open_edges(mesh: trimesh.Trimesh) -> int:
    """Edges used by one face only: the rims of holes (0 for a closed mesh)."""
    edges = np.sort(mesh.edges, axis=1)
    _, counts = np.unique(edges[:, 0].astype(np.int64) * len(mesh.vertices) + edges[:, 1], return_counts=True)
    return int((counts == 1).sum())


def table_field(answered: list[tuple[np.ndarray, np.ndarray]], resolution: int) -> FieldFunction:
    """A field that looks up, on the resolution^3 grid over BOUNDS, the values another field gave at its points."""
    lo, spacing = np.asarray(BOUNDS[0]), (np.asarray(BOUNDS[1]) - np.asarray(BOUNDS[0])) / resolution
    side = resolution + 1
    table = np.full(side**3, np.nan, dtype=np.float32)

    def flat(points: np.ndarray) -> np.ndarray:
        ijk = np.rint((points - lo) / spacing).astype(np.int64)
        return (ijk[:, 0] * side + ijk[:, 1]) * side + ijk[:, 2]

    for points, values in answered:
        table[flat(points)] = values
    return lambda points: table[flat(points)]


def measure(model: SDFNet, resolution: int, band: float, coarse: int | None, repeat: int) -> dict:
    """Extract at one resolution with both methods, `repeat` times alternating; the fastest run of each, Chamfer,
    component and open-edge counts."""
    model_field = torch_field(model)
    answered: list[tuple[np.ndarray, np.ndarray]] = []

    def recorded(points: np.ndarray) -> np.ndarray:
        values = model_field(points)
        answered.append((points.copy(), np.array(values, dtype=np.float32)))  # not views that pin buffers
        return values

    meshes: dict[str, trimesh.Trimesh] = {}
    stats: dict[str, ExtractionStats] = {}
    for _ in range(repeat):
        for method in ("dense", "hierarchical"):
            answered.clear()
            field = recorded if method == "hierarchical" else model_field  # a dense run would hold every point
            mesh, run = extract_neural_field(
                field, BOUNDS, resolution, method=method, chunk_size=CHUNK, coarse_resolution=coarse, band=band
            )
            if method not in stats or run.seconds < stats[method].seconds:
                meshes[method], stats[method] = mesh, run
    # the hierarchical extraction again (fastest of `repeat`), each query answered from a table of what the model
    # answered before: the time it takes without the field's own cost
    replayed = table_field(answered, resolution)
    for _ in range(repeat):
        _, run = extract_neural_field(
            replayed, BOUNDS, resolution, chunk_size=CHUNK, coarse_resolution=coarse, band=band
        )
        if "replayed" not in stats or run.seconds < stats["replayed"].seconds:
            stats["replayed"] = run
    answered.clear()
    assert stats["replayed"].queries == stats["hierarchical"].queries, "the replay asked for other points"
    row: dict = {"resolution": resolution, "coarse": stats["hierarchical"].coarse_resolution, "stats": stats}
    row["chamfer"] = chamfer_voxels(meshes["dense"], meshes["hierarchical"], resolution)
    row["components"] = {m: len(mesh.split(only_watertight=False)) for m, mesh in meshes.items()}
    row["open_edges"] = {m: open_edges(mesh) for m, mesh in meshes.items()}
    row["faces"] = {m: len(mesh.faces) for m, mesh in meshes.items()}
    return row


def render(rows: list[dict], fit_seconds: float, threads: int, band: float, repeat: int) -> str:
    """A markdown table, the command in its first line."""
    lines = [
        "`.venv/bin/python bench/extract_bench.py`: an MLP SDF (Fourier features, 3 x 128) fitted to busted.ply,"
        f" meshed on the CPU ({threads} torch threads) in chunks of {CHUNK} points, band {band} cells; fastest of"
        f" {repeat} alternating runs per method; fitting took {fit_seconds:.0f} s. Run {time.strftime('%Y-%m-%d')}"
        " on a machine shared with other jobs: the ratios compare runs made side by side.",
        "",
        "| resolution | method | coarse | queries | chunks | seconds | in the field | faces | open edges | components"
        " | Chamfer vs dense (voxels) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for method, stats in row["stats"].items():
            if method == "replayed":
                continue
            coarse = row["coarse"] if method == "hierarchical" else "-"
            chamfer = f"{row['chamfer']:.4f}" if method == "hierarchical" else "-"
            lines.append(
                f"| {row['resolution']} | {method} | {coarse} | {stats.queries:,} | {stats.chunks:,} |"
                f" {stats.seconds:.2f} | {stats.field_seconds:.2f} | {row['faces'][method]:,} |"
                f" {row['open_edges'][method]:,} | {row['components'][method]} | {chamfer} |"
            )
    lines += ["", *summary(rows)]
    return "\n".join(lines)


def summary(rows: list[dict]) -> list[str]:
    """Dense-to-hierarchical ratios at each resolution, against the issue's targets at 384."""
    lines = []
    for row in rows:
        dense, fine, replayed = (row["stats"][m] for m in ("dense", "hierarchical", "replayed"))
        lines.append(
            f"- {row['resolution']}: hierarchical needs 1/{dense.queries / fine.queries:.1f} of the dense queries"
            f" and is {dense.seconds / fine.seconds:.1f}x faster; {fine.seconds - fine.field_seconds:.2f} s of its"
            f" {fine.seconds:.2f} s are spent outside the field (dense: {dense.seconds - dense.field_seconds:.2f} s),"
            f" and {replayed.seconds:.2f} s is what it takes when a table answers the same queries instead."
        )
    lines.append(
        f"- Targets at 384 (issue): at most 1/30 of the {BRIEF_DENSE_QUERIES / 1e6:.1f} M dense queries, at least 20x"
        " faster on the CPU."
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, help="Replace this benchmark's section in a markdown file.")
    parser.add_argument("--samples", type=int, default=30_000, help="Training points (signed distances are slow).")
    parser.add_argument("--steps", type=int, default=600, help="Adam steps.")
    parser.add_argument("--resolution", type=int, action="append", help="Resolutions to measure (default 128 256 384).")
    parser.add_argument("--band", type=float, default=BAND, help="Refinement band in cells (extract_neural_field).")
    parser.add_argument("--coarse", type=int, help="Coarse resolution (default: extract_neural_field's choice).")
    parser.add_argument("--repeat", type=int, default=2, help="Runs per method and resolution; the fastest counts.")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 for torch's own choice.")
    args = parser.parse_args()
    if args.threads:
        # one thread by default: where other jobs share the cores, torch's threads wait on each other (on the
        # 2-core machine of docs/BENCHMARKS.md, 18-36 us a query with 2 threads against 1.5-3.3 us with one)
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = fit_sdf(*training_samples(load_normalised(MESH), args.samples), steps=args.steps)
    fit_seconds = time.perf_counter() - start
    resolutions = args.resolution or RESOLUTIONS
    rows = [measure(model, resolution, args.band, args.coarse, args.repeat) for resolution in resolutions]
    body = render(rows, fit_seconds, torch.get_num_threads(), args.band, args.repeat)
    print(body)
    if args.write:
        write_section(args.write, MARKER, HEADING, body)


if __name__ == "__main__":
    main()
