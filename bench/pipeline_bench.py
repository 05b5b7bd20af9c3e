"""Pipeline benchmark: silhouette fidelity, speed per stage and peak memory of the default generator.

    .venv/bin/python bench/pipeline_bench.py [--repeats 5] [--write docs/BENCHMARKS.md]

Fidelity: the mesh's silhouette from the input view against the input's object mask, both cropped to their bounding
boxes and resized to one size (IoU). The reference mask is the alpha channel for RGBA images and, for images on the
plain gray background, every pixel whose colour differs from the border colour by more than a small tolerance
(independent of our background remover). Speed: decode to textured GLB written, default settings, median of
`--repeats` runs per image, with every image also resized to 512 x 512 for the speed target. Memory: peak RSS of a
fresh process that generates one image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from orfeas import GenerateOptions, PipelineSettings, Settings, generate, save_result
from orfeas.evaluation import silhouette_iou
from orfeas.pipeline.generators import create_generator
from orfeas.pipeline.image import load_image
from report import write_section

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO.parent / "shared" / "images"
HEADING = "Pipeline: fidelity, speed, memory"
MARKER = "pipeline-bench"


def reference_mask(rgba: np.ndarray) -> np.ndarray:
    """Object mask that does not depend on our remover: alpha, or distance from the plain border colour."""
    if (rgba[..., 3] < 128).mean() > 0.01:
        return rgba[..., 3] >= 128
    rgb = rgba[..., :3].astype(np.int16)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    mask = np.abs(rgb - background).max(axis=2) > 12
    mask = ndimage.binary_opening(mask, iterations=2)
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum(mask, labels, range(1, count + 1))
        mask = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.01 * sizes.max()))
    return mask


def time_image(source, generator, settings: PipelineSettings, repeats: int, out: Path) -> tuple[float, dict]:
    """Median seconds from decode to GLB written, and the stage shares of the median run."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = generate(source, GenerateOptions(), settings, generator)
        save_result(result, out, "bench")
        runs.append((time.perf_counter() - start, result))
    runs.sort(key=lambda run: run[0])
    seconds, result = runs[len(runs) // 2]
    return seconds, result


def peak_memory_mb(path: Path) -> float:
    """Peak resident memory of a fresh process that generates `path` into a temporary folder."""
    code = (
        "import sys, tempfile, pathlib\n"
        "from orfeas import generate, save_result\n"
        "r = generate(sys.argv[1]); save_result(r, pathlib.Path(tempfile.mkdtemp()), 'm')\n"
        # VmHWM is this process's own high-water mark (ru_maxrss can carry the parent's over from fork)
        "status = pathlib.Path('/proc/self/status').read_text().splitlines()\n"
        "print([line.split()[1] for line in status if line.startswith('VmHWM')][0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, help="Replace this benchmark's section in a markdown file.")
    args = parser.parse_args()

    settings = Settings().pipeline()
    generator = create_generator("inflate", settings)
    images = sorted(IMAGES.glob("*.png"))
    rows, speeds_512, shares = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(images[0], GenerateOptions(), settings, generator)  # warm imports and caches
        for path in images:
            rgba = load_image(path)
            seconds, result = time_image(path, generator, settings, args.repeats, out)
            iou = silhouette_iou(result.mesh, reference_mask(rgba))
            square = np.asarray(Image.fromarray(rgba).resize((512, 512), Image.LANCZOS))
            seconds_512, result_512 = time_image(square, generator, settings, args.repeats, out)
            speeds_512.append(seconds_512)
            shares.append(result_512.profile.to_dict()["shares"])
            rows.append(
                {
                    "image": path.name,
                    "size": f"{rgba.shape[1]}x{rgba.shape[0]}",
                    "iou": iou,
                    "watertight": bool(result.mesh.is_watertight),
                    "faces": len(result.mesh.faces),
                    "seconds": seconds,
                    "seconds_512": seconds_512,
                    "slowest": result_512.profile.slowest(),
                    "peak_mb": peak_memory_mb(path),
                }
            )
    stage_share = {stage: statistics.median(s[stage] for s in shares) for stage in shares[0]}
    summary = {
        "mean_iou": statistics.mean(r["iou"] for r in rows),
        "min_iou": min(r["iou"] for r in rows),
        "median_seconds_512": statistics.median(speeds_512),
        "max_peak_mb": max(r["peak_mb"] for r in rows),
        "all_watertight": all(r["watertight"] for r in rows),
    }
    report = render(rows, stage_share, summary, args.repeats)
    print(report)
    print(json.dumps(summary, indent=2), file=sys.stderr)
    if args.write:
        write_section(args.write, MARKER, HEADING, report)


def render(rows: list[dict], stage_share: dict, summary: dict, repeats: int) -> str:
    lines = [
        f"Command: `make bench` (`.venv/bin/python bench/pipeline_bench.py --repeats {repeats}`), "
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}, "
        f"run {time.strftime('%Y-%m-%d')}.",
        "",
        "| image | size | silhouette IoU | watertight | faces | s (native size) | s (512x512) | slowest stage "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['image']} | {r['size']} | {r['iou']:.3f} | {'yes' if r['watertight'] else 'no'} | {r['faces']:,} "
            f"| {r['seconds']:.3f} | {r['seconds_512']:.3f} | {r['slowest']} | {r['peak_mb']:.0f} |"
        )
    lines += [
        "",
        f"- Silhouette IoU: mean **{summary['mean_iou']:.3f}**, lowest {summary['min_iou']:.3f} "
        "(targets: mean ≥ 0.97, none below 0.93).",
        f"- Speed: median **{summary['median_seconds_512']:.3f} s** per 512x512 image, decode to textured GLB "
        "written (target ≤ 0.5 s).",
        f"- Peak memory: **{summary['max_peak_mb']:.0f} MB** (largest over the images, whole process; target ≤ 1 GB).",
        "- Median share of each stage at 512x512: "
        + ", ".join(f"{stage} {share:.0%}" for stage, share in stage_share.items())
        + ".",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
