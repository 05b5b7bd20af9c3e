"""Default quality on the evaluation corpus (bench/corpus.py), tuning and check parts, baselines side by side.

    .venv/bin/python bench/quality_bench.py [--part cutout|shape|all] [--split tuning|check|all] [--seed 0]
                                            [--no-baselines] [--remover MODEL.onnx] [-O KEY=VALUE ...]
                                            [--dump cases.json] [--write docs/BENCHMARKS.md]

While iterating, `--part cutout --split tuning --no-baselines` scores only the current remover on the tuning part.

Cut-outs: every composite goes through background removal; IoU of the mask (alpha >= 0.5) against the object's
true alpha, per background kind, for the weight-free remover before issue 15 (bench/baseline_remover.py), the
current default and, with --remover, a learned ONNX remover. Seconds are per image at the composite's size.

Shapes: every render goes through the pipeline (alpha cut-out, default settings, no texture) to a mesh, scored
like ../shared/gt/score.py (F@0.05 after centring it on its bounding box and scaling its longest X/Y side to 1)
against the placed mesh. Rows: the default inflate prior (with any -O options), the tube prior alone
(`-O shading=0`) and the silhouette extruded to a constant depth of 0.3 (`slab`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

import baseline_remover
from accuracy_bench import load_scorer
from corpus import BACKGROUNDS, DEFAULT_OUT, LIGHTINGS, RENDER_MARGIN, VIEWS, Case, build_corpus
from orfeas import GenerateOptions, Settings, generate
from orfeas.cli.generate import parse_generator_options
from orfeas.errors import InvalidImage
from orfeas.pipeline.background import remove_background
from orfeas.pipeline.generators import create_generator
from orfeas.pipeline.generators.base import GridField
from orfeas.pipeline.generators.inflate import signed_distance_2d
from report import write_section

HEADING = "Quality on the evaluation corpus (cut-outs and shapes)"
MARKER = "quality-bench"
SLAB_DEPTH = 0.3  # total depth relative to the longest X/Y side, as in ../shared/gt/README.md
PARTS = ("tuning", "check")


class SlabGenerator:
    """Baseline: the silhouette extruded to a constant depth (no weights, no shading)."""

    name = "slab"
    default_resolution = 192

    def check_options(self, options: dict) -> None:
        pass

    def generate_batch(self, images, params) -> list[GridField]:
        return [self._field(image, params.resolution) for image in images]

    def memory_per_image(self, params) -> int:
        return 0

    def _field(self, cutout, resolution: int) -> GridField:
        sdf = signed_distance_2d(cutout.mask) / cutout.size
        sdf = cv2.resize(sdf, (resolution, resolution), interpolation=cv2.INTER_LINEAR)
        sdf = np.ascontiguousarray(sdf[::-1].T)
        spacing = 1.0 / resolution
        half = SLAB_DEPTH * (1 - 2 * RENDER_MARGIN) / 2
        nz = int(np.ceil(2 * (half + 2 * spacing) / spacing)) + 1
        z = ((np.arange(nz) - (nz - 1) / 2) * spacing).astype(np.float32)
        values = np.maximum(np.abs(z)[None, None, :] - half, -sdf[:, :, None]).astype(np.float32)
        start = -0.5 + 0.5 * spacing
        return GridField(values, (start, start, float(z[0])), spacing)


# ---------------------------------------------------------------------------------------------------------------
# Cut-outs


def default_remover(rgb: np.ndarray) -> np.ndarray:
    return remove_background(rgb)[0] >= 0.5


def onnx_remover(model: Path) -> Callable[[np.ndarray], np.ndarray]:
    from orfeas.pipeline.learned_remover import OnnxRemover

    remover = OnnxRemover(model)
    return lambda rgb: remove_background(rgb, remover)[0] >= 0.5


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1))


def score_cutouts(folder: Path, cases: list[Case], removers: dict[str, Callable]) -> list[dict]:
    rows = []
    for case in cases:
        rgb = np.asarray(Image.open(folder / case.image).convert("RGB"))
        truth = np.asarray(Image.open(folder / case.truth)) >= 128
        row = {"id": case.id, "object": case.object, "split": case.split, "kind": case.variant}
        for name, remover in removers.items():
            start = time.perf_counter()
            try:
                mask = remover(rgb)
            except InvalidImage:
                mask = np.zeros_like(truth)
            row[f"{name}_seconds"] = time.perf_counter() - start
            row[name] = iou(mask, truth)
        rows.append(row)
    return rows


def render_cutouts(rows: list[dict], removers: list[str]) -> str:
    header = " | ".join(f"{part} {name}" for part in PARTS for name in removers)
    lines = [f"| background | {header} |", "|---" * (1 + len(PARTS) * len(removers)) + "|"]

    def cells(select: Callable[[dict], bool], reduce: Callable = statistics.mean, fmt: str = "{:.3f}") -> str:
        out = []
        for part in PARTS:
            for name in removers:
                values = [r[name] for r in rows if r["split"] == part and select(r)]
                out.append(fmt.format(reduce(values)) if values else "-")
        return " | ".join(out)

    for kind in BACKGROUNDS:
        lines.append(f"| {kind} | {cells(lambda r, k=kind: r['kind'] == k)} |")
    lines.append(f"| **mean** | {cells(lambda r: True)} |")
    lines.append(f"| worst kind's mean | {cells_worst_kind(rows, removers)} |")
    lines.append(f"| worst case | {cells(lambda r: True, min)} |")
    lines.append(f"| cases below 0.80 | {cells(lambda r: True, lambda v: sum(x < 0.8 for x in v), '{}')} |")
    counts = " | ".join(str(sum(r["split"] == p for r in rows)) for p in PARTS for _ in removers)
    lines.append(f"| cases | {counts} |")
    seconds = []
    for part in PARTS:
        for name in removers:
            values = [r[f"{name}_seconds"] for r in rows if r["split"] == part]
            seconds.append(f"{statistics.median(values):.3f}" if values else "-")
    lines.append(f"| median seconds per image | {' | '.join(seconds)} |")
    return "\n".join(lines)


def cells_worst_kind(rows: list[dict], removers: list[str]) -> str:
    out = []
    for part in PARTS:
        for name in removers:
            by_kind = defaultdict(list)
            for r in rows:
                if r["split"] == part:
                    by_kind[r["kind"]].append(r[name])
            out.append(f"{min(statistics.mean(v) for v in by_kind.values()):.3f}" if by_kind else "-")
    return " | ".join(out)


# ---------------------------------------------------------------------------------------------------------------
# Shapes


def shape_variants(options: dict) -> dict[str, tuple[object, dict]]:
    """Name -> (generator, generator options) of each row: the default, the tube prior and the slab."""
    settings = Settings().pipeline()
    inflate = create_generator("inflate", settings)
    return {"default": (inflate, options), "tube": (inflate, {"shading": 0}), "slab": (SlabGenerator(), {})}


def score_shapes(folder: Path, cases: list[Case], variants: dict) -> list[dict]:
    scorer = load_scorer()
    settings = Settings().pipeline()
    truths: dict[str, object] = {}
    rows = []
    for case in cases:
        if case.truth not in truths:
            truths[case.truth] = scorer.load(folder / case.truth)
        truth = truths[case.truth]
        view, lighting = case.variant.split("/")
        row = {"id": case.id, "object": case.object, "split": case.split, "view": view, "lighting": lighting}
        for name, (generator, options) in variants.items():
            start = time.perf_counter()
            result = generate(
                folder / case.image, GenerateOptions(texture=False, generator_options=options), settings, generator
            )
            row[f"{name}_seconds"] = time.perf_counter() - start
            scores = scorer.scores(truth, scorer.normalise(result.mesh.copy()))
            row[name] = scores["fscore@0.05"]
            row[f"{name}_chamfer"] = scores["chamfer"]
        rows.append(row)
    return rows


def render_shapes(rows: list[dict], variants: list[str]) -> str:
    header = " | ".join(f"{part} {name}" for part in PARTS for name in variants)
    lines = [f"| F@0.05 ↑ | {header} |", "|---" * (1 + len(PARTS) * len(variants)) + "|"]

    def cells(select: Callable[[dict], bool], key: str = "", reduce: Callable = statistics.mean) -> str:
        out = []
        for part in PARTS:
            for name in variants:
                values = [r[f"{name}{key}"] for r in rows if r["split"] == part and select(r)]
                out.append(f"{reduce(values):.3f}" if values else "-")
        return " | ".join(out)

    for view in VIEWS:
        lines.append(f"| view: {view} | {cells(lambda r, v=view: r['view'] == v)} |")
    for lighting in LIGHTINGS:
        lines.append(f"| lighting: {lighting} | {cells(lambda r, g=lighting: r['lighting'] == g)} |")
    lines.append(f"| **mean** | {cells(lambda r: True)} |")
    lines.append(f"| mean Chamfer ↓ | {cells(lambda r: True, '_chamfer')} |")
    if "tube" in variants:
        lines.append(f"| worst view or lighting kind's mean minus tube | {worst_kind_minus_tube(rows, variants)} |")
        margins = []
        for part in PARTS:
            for name in variants:
                values = [r[name] - r["tube"] for r in rows if r["split"] == part]
                margins.append(f"{min(values):+.3f}" if values else "-")
        lines.append(f"| worst case minus tube | {' | '.join(margins)} |")
        below = []
        for part in PARTS:
            for name in variants:
                values = [r[name] - r["tube"] for r in rows if r["split"] == part]
                below.append(str(sum(v < -0.05 for v in values)) if values else "-")
        lines.append(f"| cases more than 0.05 below tube | {' | '.join(below)} |")
    counts = " | ".join(str(sum(r["split"] == p for r in rows)) for p in PARTS for _ in variants)
    lines.append(f"| cases | {counts} |")
    return "\n".join(lines)


def worst_kind_minus_tube(rows: list[dict], variants: list[str]) -> str:
    """Per part and row: the lowest, over view kinds and lighting kinds, of the kind's mean minus the tube's."""
    kinds = [("view", v) for v in VIEWS] + [("lighting", g) for g in LIGHTINGS]
    out = []
    for part in PARTS:
        for name in variants:
            gaps = []
            for key, kind in kinds:
                chosen = [r for r in rows if r["split"] == part and r[key] == kind]
                if chosen:
                    gaps.append(statistics.mean(r[name] - r["tube"] for r in chosen))
            out.append(f"{min(gaps):+.3f}" if gaps else "-")
    return " | ".join(out)


def render(cutouts: str | None, shapes: str | None, seed: int, note: str) -> str:
    parts = [
        f"Command: `make bench` (`.venv/bin/python bench/quality_bench.py --write docs/BENCHMARKS.md`), corpus seed "
        f"{seed}, run {time.strftime('%Y-%m-%d')}{note}. The corpus (bench/corpus.py) is split by object: the "
        "*tuning* part holds every object tuned on before (../shared/images, ../shared/gt) and a seeded share of "
        "the new ones; the *check* part holds only objects never tuned on.",
    ]
    if cutouts:
        parts += ["", "Cut-out IoU (mask against the true alpha; `before`: the remover before issue 15):", "", cutouts]
    if shapes:
        parts += [
            "",
            "Shape F@0.05 (`tube`: `-O shading=0`; `slab`: constant depth 0.3; by view and by lighting kind):",
            "",
            shapes,
        ]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("cutout", "shape", "all"), default="all")
    parser.add_argument("--split", choices=("tuning", "check", "all"), default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Where the corpus is built (cached).")
    parser.add_argument(
        "--no-baselines", action="store_true", help="Score only the default (no `before`, `tube` or `slab` rows)."
    )
    parser.add_argument("--remover", type=Path, help="Also score this ONNX background remover.")
    parser.add_argument("-O", "--option", action="append", default=[], help="Inflate option KEY=VALUE (default row).")
    parser.add_argument("--write", type=Path, help="Replace this benchmark's section in a markdown file.")
    parser.add_argument("--dump", type=Path, help="Write every case's scores to this JSON file.")
    args = parser.parse_args()
    folder, cases = build_corpus(args.out, args.seed)
    if args.split != "all":
        cases = [c for c in cases if c.split == args.split]
    dump: dict[str, list[dict]] = {}
    cutout_table = shape_table = None
    if args.part in ("cutout", "all"):
        removers = {"now": default_remover}
        if not args.no_baselines:
            removers = {"before": baseline_remover.segment_plain_background, **removers}
        if args.remover:
            removers["onnx"] = onnx_remover(args.remover)
        dump["cutouts"] = score_cutouts(folder, [c for c in cases if c.kind == "cutout"], removers)
        cutout_table = render_cutouts(dump["cutouts"], list(removers))
        print(cutout_table)
    if args.part in ("shape", "all"):
        variants = shape_variants(parse_generator_options(args.option))
        if args.no_baselines:
            variants = {"default": variants["default"]}
        dump["shapes"] = score_shapes(folder, [c for c in cases if c.kind == "shape"], variants)
        shape_table = render_shapes(dump["shapes"], list(variants))
        print(shape_table)
    if args.dump:
        args.dump.write_text(json.dumps(dump, indent=1))
    if args.write:
        note = f"; default row with `-O {' -O '.join(args.option)}`" if args.option else ""
        write_section(args.write, MARKER, HEADING, render(cutout_table, shape_table, args.seed, note))


if __name__ == "__main__":
    main()
