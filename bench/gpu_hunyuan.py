"""Hunyuan3D-2 shape generation on a GPU: diffusion and volume decoding, seconds per image.

    python bench/gpu_hunyuan.py [--model hunyuan3d-dit-v2-0] [--device cuda] [--dtypes float32,float16,bfloat16]
                                [--batches 1,4] [--steps 30] [--resolution 384] [--json out.json]
                                [--write docs/BENCHMARKS.md]
    for m in hunyuan3d-dit-v2-0 hunyuan3d-dit-v2-mini-turbo hunyuan3d-dit-v2-mv; do
        python bench/gpu_hunyuan.py --model $m --json $m.json; done    # the variants, each its default steps
    python bench/gpu_hunyuan.py --tiny --device cpu      # a smoke run of this script, a few seconds on the CPU

A variant's full-size architecture (hunyuan_random.model_config: hunyuan3d-dit-v2-0's config by default; a -turbo
variant with its turbo VAE, a multi-view one fed four views per item) with random weights, built in memory:
diffusion and dense decoding cost the same whatever the weights hold. Diffusion: `sample_latents` over a batch
(the conditioner once, then one DiT pass per step on 2 x batch sequences for classifier-free guidance, batch
sequences for a guidance-distilled -fast or -turbo variant) at the variant's default steps; seconds per image =
batch time / batch size, with the peak memory the batch added against `memory_per_image`'s estimate.

Decoding one image's latents at the octree resolution: hierarchical decoding follows the surface, and a random
model's field has no realistic one, so both of our methods run the real shape decoder on every point they query but
mesh an analytic shape instead (a sphere on a torus filling the box like an object does): the decoder's cost, the
query pattern of a real surface. The Part 1 line extrapolates the decoder's measured cost per query to the
queries the fitted neural SDF of bench/extract_bench.py needed at 384. FlashVDM (hy3dgen's own decoder, attention on
a third of the latents) is timed on the random field itself, whose surface is not realistic: indicative only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from orfeas.pipeline.background import Cutout
from orfeas.pipeline.extract import extract_neural_field, torch_field
from orfeas.pipeline.generators.base import GenerationParams
from orfeas.pipeline.generators.hunyuan import BOX, HunyuanGenerator, decode_latents, sample_latents
from orfeas.pipeline.generators.hunyuan_random import model_config, random_pipeline, vae_config
from orfeas.pipeline.generators.hunyuan_variants import get_variant
from orfeas.pipeline.settings import PipelineSettings
from report import write_section

MARKER = "gpu-hunyuan"
HEADING = "Hunyuan3D-2 on a GPU"
PART1_QUERIES_384 = 1_412_431  # bench/extract_bench.py, hierarchical at 384, band 0.87 (docs/BENCHMARKS.md)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def realistic_sdf(points: torch.Tensor) -> torch.Tensor:
    """Signed distance to a sphere (radius 0.45, centre y = 0.3) standing on a torus (0.55, 0.15; y = -0.45)."""
    sphere = torch.linalg.norm(points - points.new_tensor([0.0, 0.3, 0.0]), dim=-1) - 0.45
    p = points - points.new_tensor([0.0, -0.45, 0.0])
    ring = torch.stack([torch.linalg.norm(p[:, [0, 2]], dim=-1) - 0.55, p[:, 1]], dim=-1)
    torus = torch.linalg.norm(ring, dim=-1) - 0.15
    return torch.minimum(sphere, torus)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, run):
    synchronize(device)
    start = time.perf_counter()
    result = run()
    synchronize(device)
    return result, time.perf_counter() - start


def images(count: int, size: int) -> list[Cutout]:
    """Discs of different sizes and colours (what the image shows does not change the cost)."""
    rows, cols = np.mgrid[:size, :size]
    out = []
    for index in range(count):
        rgba = np.zeros((size, size, 4), dtype=np.uint8)
        radius = size * (0.25 + 0.05 * (index % 5))
        rgba[(rows - size / 2) ** 2 + (cols - size / 2) ** 2 < radius**2] = (200, (60 + 40 * index) % 256, 60, 255)
        out.append(Cutout(rgba=rgba, method="bench"))
    return out


def bench_diffusion(
    pipeline, generator, device, dtype_name, batches, steps, image_size, model
) -> tuple[list[dict], object]:
    rows, latents = [], None
    views, guidance = get_variant(model).views, get_variant(model).guidance_scale
    for batch in batches:
        pictures = images(batch * views, image_size)
        if views > 1:  # a multi-view model: each item is front, left, back and right
            names = ("front", "left", "back", "right")
            pictures = [dict(zip(names, pictures[i * views : (i + 1) * views], strict=True)) for i in range(batch)]
        sample_latents(pipeline, pictures[:1], [0], 1, guidance)  # warm-up: kernels, allocator
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
        latents, seconds = timed(device, lambda p=pictures: sample_latents(pipeline, p, range(len(p)), steps, guidance))
        peak = torch.cuda.max_memory_allocated() - before if device.startswith("cuda") else None
        rows.append(
            {
                "model": model,
                "dtype": dtype_name,
                "stage": "diffusion",
                "batch": batch,
                "steps": steps,
                "seconds": seconds,
                "seconds_per_image": seconds / batch,
                "peak_bytes_per_image": peak / batch if peak else None,
                "estimate_bytes_per_image": generator.memory_per_image(GenerationParams(options={"model": model})),
            }
        )
    return rows, latents


def bench_decoding(pipeline, device, dtype_name, latents, resolution, chunk, part1_queries) -> list[dict]:
    vae = pipeline.vae
    with torch.inference_mode():
        tokens = vae(latents[:1] / vae.scale_factor)
    queries = 0

    def field(points: torch.Tensor) -> torch.Tensor:
        nonlocal queries
        with torch.inference_mode():
            vae.geo_decoder(queries=points[None], latents=tokens)  # the real cost; the values are not used
        queries += len(points)
        return realistic_sdf(points.float())

    rows = []
    per_query = None
    for method in ("dense", "hierarchical"):
        queries = 0
        fn = torch_field(field, device=device)  # float32 points, as the generator queries them
        (mesh, _stats), seconds = timed(
            device,
            lambda m=method, f=fn: extract_neural_field(f, ((-BOX,) * 3, (BOX,) * 3), resolution, m, chunk),
        )
        if method == "dense":
            per_query = seconds / queries
        rows.append(
            {
                "dtype": dtype_name,
                "stage": f"decode {method}",
                "batch": 1,
                "resolution": resolution,
                "queries": queries,
                "seconds": seconds,
                "seconds_per_image": seconds,
                "faces": len(mesh.faces),
            }
        )
    rows.append(
        {
            "dtype": dtype_name,
            "stage": "decode hierarchical, Part 1 queries",
            "batch": 1,
            "resolution": 384,
            "queries": part1_queries,
            "seconds": per_query * part1_queries,
            "seconds_per_image": per_query * part1_queries,
        }
    )
    try:
        mesh, seconds = timed(device, lambda: decode_latents(pipeline, latents[:1], resolution, "flashvdm", chunk))
        rows.append(
            {
                "dtype": dtype_name,
                "stage": "decode flashvdm (random field)",
                "batch": 1,
                "resolution": resolution,
                "seconds": seconds,
                "seconds_per_image": seconds,
                "faces": len(mesh.faces),
            }
        )
    except (ValueError, RuntimeError) as exc:  # a random field may have no surface at all
        print(f"flashvdm skipped: {exc}", file=sys.stderr)
    return rows


def markdown(rows: list[dict], device_name: str, command: str, size: str) -> str:
    def cell(value, fmt: str) -> str:
        return "-" if value is None else fmt.format(value)

    lines = [
        f"`{command}` on {device_name}; random weights, {size} architecture.",
        "",
        "| dtype | stage | batch | resolution | queries | s | s / image | peak MiB / image | estimate MiB / image |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak, estimate = r.get("peak_bytes_per_image"), r.get("estimate_bytes_per_image")
        lines.append(
            f"| {r['dtype']} | {r['stage']} | {r['batch']} | {cell(r.get('resolution'), '{}')} "
            f"| {cell(r.get('queries'), '{:,}')} | {r['seconds']:.2f} | {r['seconds_per_image']:.2f} "
            f"| {cell(peak and peak / 2**20, '{:,.0f}')} | {cell(estimate and estimate / 2**20, '{:,.0f}')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model: checks the script, not the speed")
    parser.add_argument("--model", default="hunyuan3d-dit-v2-0", help="the variant (hunyuan_variants.VARIANTS)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", default=None, help="comma-separated; default float32,float16,bfloat16")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes; default 1,4")
    parser.add_argument("--steps", type=int, default=None, help="diffusion steps; default 30")
    parser.add_argument("--resolution", type=int, default=None, help="octree resolution; default 384")
    parser.add_argument("--chunk", type=int, default=32000, help="decoder points per call")
    parser.add_argument(
        "--part1-queries", type=int, default=PART1_QUERIES_384, help="hierarchical queries at 384 of extract_bench"
    )
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--write", type=Path, help="write the table into this Markdown file")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here; use --tiny --device cpu for a smoke run")
    dtypes = (args.dtypes or ("float32" if args.tiny else "float32,float16,bfloat16")).split(",")
    batches = [int(b) for b in (args.batches or ("1,2" if args.tiny else "1,4")).split(",")]
    steps = args.steps or (2 if args.tiny else get_variant(args.model).steps)
    resolution = args.resolution or (48 if args.tiny else 384)
    image_size = 64 if args.tiny else 512
    config = model_config(tiny=args.tiny, model=args.model)
    if get_variant(args.model).vae is not None:  # a -turbo variant decodes with its turbo VAE
        config["vae"] = vae_config(tiny=args.tiny, model=args.model)
    settings = PipelineSettings(device=args.device, hunyuan_model=args.model)

    rows = []
    for name in dtypes:
        pipeline = random_pipeline(config, args.device, DTYPES[name])
        generator = HunyuanGenerator(settings.model_copy(update={"hunyuan_dtype": name}), pipeline)
        diffusion, latents = bench_diffusion(
            pipeline, generator, args.device, name, batches, steps, image_size, args.model
        )
        decoding = bench_decoding(pipeline, args.device, name, latents, resolution, args.chunk, args.part1_queries)
        for row in diffusion + decoding:
            print(json.dumps(row), flush=True)
        rows += diffusion + decoding
        del pipeline, generator
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()

    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "the CPU"
    command = "python bench/gpu_hunyuan.py " + " ".join(sys.argv[1:])
    table = markdown(rows, device_name, command, "tiny" if args.tiny else "full-size")
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"device": device_name, "command": command, "rows": rows}, indent=1))
    if args.write:
        write_section(args.write, MARKER, HEADING, table)


if __name__ == "__main__":
    main()
