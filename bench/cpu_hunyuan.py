"""Hunyuan3D-2 variants on the CPU: seconds per image for conditioning, each diffusion step, the whole diffusion and
decoding, with peak resident memory, beside hy3dgen's own default call on the same model.

    python bench/cpu_hunyuan.py --models hunyuan3d-dit-v2-mini-turbo --dtypes bfloat16 --batches 1,2 \\
        --measure-steps 5 --full-decode --json out/a.json
    python bench/cpu_hunyuan.py --hy3dgen-default hunyuan3d-dit-v2-mini-turbo --json out/h.json
    python bench/cpu_hunyuan.py --tables out/a.json,out/h.json --write docs/BENCHMARKS.md
    python bench/cpu_hunyuan.py --tiny                      # a smoke run of this script, seconds

Full-size architectures (hunyuan_random.model_config: the published numbers of each variant) with random weights,
built in memory: the cost does not depend on the weights' values. Diffusion runs the generator's own
`sample_latents` (hy3dgen's sampler with the variant's scheduler, conditioner once, one DiT pass per step for the
batch); hooks split it into conditioning and steps. Steps cost the same whatever the schedule, so the whole
diffusion at the variant's default steps is conditioning + default steps x the measured mean step, marked
"extrapolated" when fewer steps were run than the default.

Decoding: a random model has no realistic surface, and hierarchical decoding follows the surface, so the real shape
decoder (the variant's: turbo VAE for -turbo) is charged for the queries our hierarchical extractor makes on an
analytic shape (a sphere on a torus, bench/gpu_hunyuan.py's), at its measured cost per query; `--full-decode` runs
it for real on that query pattern instead. `--flashvdm` runs hy3dgen's FlashVDM decoding (its own refinement and
top-k attention) with the same decoder cost and the same analytic values, so both follow the same surface.

hy3dgen's default (`--hy3dgen-default MODEL`): `Hunyuan3DDiTFlowMatchingPipeline.from_pretrained(..., device="cpu")`
keeps its float16 default, and `__call__` runs 50 steps and decodes all 385^3 grid points in chunks of 8,000 with
the checkpoint's own VAE. At float16 this CPU runs about 1 GFLOPS, so the whole call would run for days: one block
of each kind (conditioner layer, DiT double and single block) and one decoder chunk are timed at their real shapes
and scaled by the block and chunk counts, marked "extrapolated". The same is done in float32 (a user's first fix).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from gpu_hunyuan import realistic_sdf
from orfeas.pipeline.background import Cutout
from orfeas.pipeline.extract import extract_neural_field, torch_field
from orfeas.pipeline.generators.base import GenerationParams
from orfeas.pipeline.generators.hunyuan import BOX, HunyuanGenerator, sample_latents, worker_cores
from orfeas.pipeline.generators.hunyuan_random import model_config, vae_config
from orfeas.pipeline.generators.hunyuan_variants import get_variant
from orfeas.pipeline.settings import PipelineSettings
from report import write_section

MARKER = "cpu-hunyuan"
HEADING = "Hunyuan3D-2 variants on the CPU"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VIEWS = ("front", "left", "back", "right")


class PeakRss:
    """The peak resident set size while the block runs, sampled every 20 ms from /proc/self/status."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> PeakRss:
        self.peak = self.now()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def fill_random(module: torch.nn.Module) -> None:
    """Values for weights allocated uninitialised: matrices ~ N(0, 1/fan_in) keep activations at unit scale (no
    denormals), vectors are 1 (norm scales) or 0 (biases)."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, param.shape[-1] ** -0.5)
            elif name.endswith(("weight", "scale")):
                param.fill_(1.0)
            else:
                param.zero_()


def build(config: dict, dtype: torch.dtype) -> dict:
    """The pipeline's components at full size, allocated directly in `dtype` (no float32 copy) and filled."""
    from hy3dgen.shapegen.pipelines import instantiate_from_config

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else previous)
    try:
        with torch.device("meta"):
            parts = {name: instantiate_from_config(config[name]) for name in ("model", "vae", "conditioner")}
    finally:
        torch.set_default_dtype(previous)
    for part in parts.values():
        part.to_empty(device="cpu")
        fill_random(part)
        part.to(dtype).eval()
    for name in ("scheduler", "image_processor"):
        parts[name] = instantiate_from_config(config[name])
    return parts


def variant_pipeline(model: str, dtype: torch.dtype, tiny: bool, paired_vae: bool = True):
    """hy3dgen's pipeline for `model` with random weights; a -turbo variant with its turbo VAE when `paired_vae`."""
    from hy3dgen.shapegen import Hunyuan3DDiTFlowMatchingPipeline

    config = model_config(tiny, model)
    if paired_vae and get_variant(model).vae is not None:
        config["vae"] = vae_config(tiny, model)
    parts = build(config, dtype)
    # hy3dgen's DinoImageEncoderMV keeps its view embedding as a plain float32 tensor; the pipeline casts it
    return Hunyuan3DDiTFlowMatchingPipeline(**parts, device="cpu", dtype=dtype)


def pictures(count: int, size: int) -> list[Cutout]:
    rows, cols = np.mgrid[:size, :size]
    out = []
    for index in range(count):
        rgba = np.zeros((size, size, 4), dtype=np.uint8)
        rgba[(rows - size / 2) ** 2 + (cols - size / 2) ** 2 < (size * (0.25 + 0.05 * index)) ** 2] = (
            200,
            (60 + 40 * index) % 256,
            60,
            255,
        )
        out.append(Cutout(rgba=rgba, method="bench"))
    return out


def items_for(model: str, batch: int, size: int) -> list:
    images = pictures(batch * 4, size)
    if get_variant(model).multiview:
        return [{view: images[4 * i + k] for k, view in enumerate(VIEWS)} for i in range(batch)]
    return images[:batch]


@contextlib.contextmanager
def forward_timer(module: torch.nn.Module, seconds: list[float]):
    """Append each forward pass's wall time to `seconds`."""
    start: list[float] = []
    pre = module.register_forward_pre_hook(lambda *_: start.append(time.perf_counter()))
    post = module.register_forward_hook(lambda *_: seconds.append(time.perf_counter() - start.pop()))
    try:
        yield
    finally:
        pre.remove()
        post.remove()


def bench_diffusion(pipeline, model: str, dtype: str, batch: int, steps: int, size: int) -> tuple[dict, object]:
    variant = get_variant(model)
    items = items_for(model, batch, size)
    cond, dit = [], []
    with PeakRss() as rss, forward_timer(pipeline.conditioner, cond), forward_timer(pipeline.model, dit):
        start = time.perf_counter()
        latents = sample_latents(pipeline, items, list(range(batch)), steps, variant.guidance_scale)
        seconds = time.perf_counter() - start
    step = float(np.mean(dit))
    other = seconds - sum(cond) - sum(dit)  # image processing and scheduler steps
    whole = sum(cond) + other + variant.steps * step
    generator = HunyuanGenerator(PipelineSettings(device="cpu", hunyuan_dtype=dtype))  # for its estimate only
    row = {
        "kind": "diffusion",
        "model": model,
        "dtype": dtype,
        "batch": batch,
        "conditioning_s_per_image": sum(cond) / batch,
        "step_s_per_image": step / batch,
        "steps_s": [round(s, 3) for s in dit],
        "steps_measured": steps,
        "default_steps": variant.steps,
        "diffusion_s_per_image": whole / batch,
        "extrapolated": steps < variant.steps,
        "peak_rss_bytes": rss.peak,
        "estimate_bytes_per_image": generator.memory_per_image(GenerationParams(options={"model": model})),
    }
    return row, latents


def bench_decoding(
    pipeline, model: str, dtype: str, latents, resolution: int, chunk: int, full: bool, flashvdm: bool
) -> list[dict]:
    """Our hierarchical extractor and, with `flashvdm`, hy3dgen's FlashVDM, on the analytic shape's query pattern."""
    vae = pipeline.vae
    rows = []
    with PeakRss() as rss:
        start = time.perf_counter()
        with torch.inference_mode():
            tokens = vae(latents[:1] / vae.scale_factor)
        transformer = time.perf_counter() - start
        queries = 0

        def analytic(points: torch.Tensor) -> torch.Tensor:
            nonlocal queries
            queries += len(points)
            return realistic_sdf(points.float())

        box = ((-BOX,) * 3, (BOX,) * 3)
        start = time.perf_counter()
        extract_neural_field(torch_field(analytic, device="cpu"), box, resolution, "hierarchical", chunk)
        overhead = time.perf_counter() - start
        probe = torch.rand(chunk, 3) * 2 * BOX - BOX
        with torch.inference_mode():
            vae.geo_decoder(queries=probe[None], latents=tokens)  # first call: kernel set-up
            start = time.perf_counter()
            repeats = 3
            for _ in range(repeats):
                vae.geo_decoder(queries=probe[None], latents=tokens)
            per_query = (time.perf_counter() - start) / (repeats * chunk)
        seconds = transformer + overhead + queries * per_query
        measured = None
        if full:

            def decoded(points: torch.Tensor) -> torch.Tensor:
                with torch.inference_mode():
                    vae.geo_decoder(queries=points[None], latents=tokens)  # the real cost; the values are not used
                return realistic_sdf(points.float())

            start = time.perf_counter()
            extract_neural_field(torch_field(decoded, device="cpu"), box, resolution, "hierarchical", chunk)
            measured = transformer + time.perf_counter() - start
    rows.append(
        {
            "kind": "decoding",
            "model": model,
            "dtype": dtype,
            "method": "hierarchical (ours)",
            "resolution": resolution,
            "queries": queries,
            "us_per_query": per_query * 1e6,
            "decoding_s": measured if measured is not None else seconds,
            "extrapolated": measured is None,
            "peak_rss_bytes": rss.peak,
        }
    )
    if not flashvdm:
        return rows
    with PeakRss() as rss:
        start = time.perf_counter()
        queries, seconds = flashvdm_on_analytic_shape(vae, tokens, resolution, chunk)
        seconds += transformer
    rows.append(
        {
            "kind": "decoding",
            "model": model,
            "dtype": dtype,
            "method": "flashvdm (hy3dgen)",
            "resolution": resolution,
            "queries": queries,
            "us_per_query": None,
            "decoding_s": seconds,
            "extrapolated": False,
            "peak_rss_bytes": rss.peak,
        }
    )
    return rows


class AnalyticDecoder:
    """The real shape decoder's cost with an analytic shape's values: what hy3dgen's FlashVDM decoder calls, so
    that it refines around a realistic surface (its top-k attention processor is installed on the real one)."""

    def __init__(self, decoder) -> None:
        self.decoder, self.queries = decoder, 0

    def set_cross_attention_processor(self, processor) -> None:
        self.decoder.set_cross_attention_processor(processor)

    def __call__(self, queries: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        self.decoder(queries=queries, latents=latents)
        self.queries += queries.shape[0] * queries.shape[1]
        sdf = realistic_sdf(queries.reshape(-1, 3).float()).reshape(*queries.shape[:-1], 1)
        return (-sdf).to(latents.dtype)  # logits are positive inside


def flashvdm_on_analytic_shape(vae, tokens, resolution: int, chunk: int) -> tuple[int, float]:
    """Queries and seconds of hy3dgen's FlashVDM volume decoding (top-k attention, its own refinement) on the
    analytic shape, plus its surface extraction."""
    from hy3dgen.shapegen.models.autoencoders import FlashVDMVolumeDecoding
    from hy3dgen.shapegen.models.autoencoders.attention_processors import CrossAttentionProcessor

    decoder = AnalyticDecoder(vae.geo_decoder)
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            logits = FlashVDMVolumeDecoding()(
                tokens,
                decoder,
                bounds=BOX,
                num_chunks=chunk,
                octree_resolution=resolution,
                mc_level=0.0,
                enable_pbar=False,
            )
            vae.surface_extractor(logits.float(), mc_level=0.0, bounds=BOX, octree_resolution=resolution)
    finally:
        vae.geo_decoder.set_cross_attention_processor(CrossAttentionProcessor())
    return decoder.queries, time.perf_counter() - start


def timed_forward(module, *args, **kwargs) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        module(*args, **kwargs)
        return time.perf_counter() - start


def bench_hy3dgen_default(model: str, dtype_name: str, tiny: bool) -> dict:
    """hy3dgen's `__call__` defaults on `model` (50 steps, dense 385^3 decoding in chunks of 8,000, the checkpoint's
    VAE), from one timed block of each kind and one decoder chunk, scaled to the whole call."""
    dtype = DTYPES[dtype_name]
    pipeline = variant_pipeline(model, dtype, tiny, paired_vae=False)
    variant = get_variant(model)
    encoder = pipeline.conditioner.main_image_encoder
    dino, dit, vae = encoder.model, pipeline.model, pipeline.vae
    views = variant.views
    size = encoder.size * 14  # the encoder's input side (518 at full size)
    hidden = dino.config.hidden_size
    tokens = encoder.num_patches
    copies = 1 if variant.guidance_distilled else 2
    steps, resolution, chunk = 50, 384, 8000
    with PeakRss() as rss:
        embed = timed_forward(dino.embeddings, torch.rand(views, 3, size, size, dtype=dtype))
        layer = timed_forward(dino.encoder.layer[0], torch.randn(views, tokens, hidden, dtype=dtype))
        conditioning = embed + layer * len(dino.encoder.layer)
        width = dit.hidden_size
        latents = vae.latent_shape[0]
        img = torch.randn(copies, latents, width, dtype=dtype)
        txt = torch.randn(copies, tokens * views, width, dtype=dtype)
        vec = torch.randn(copies, width, dtype=dtype)
        double = timed_forward(dit.double_blocks[0], img=img, txt=txt, vec=vec, pe=None)
        single = timed_forward(dit.single_blocks[0], torch.cat([txt, img], 1), vec=vec, pe=None)
        step = double * len(dit.double_blocks) + single * len(dit.single_blocks)
        with torch.inference_mode():
            tok = vae.post_kl(torch.randn(1, *vae.latent_shape, dtype=dtype))
        blocks = vae.transformer.resblocks
        transformer = timed_forward(blocks[0], tok) * len(blocks)
        probe = max(chunk // 8, 64)  # a part of one chunk; cost is linear in the queries
        per_chunk = timed_forward(vae.geo_decoder, queries=torch.rand(1, probe, 3), latents=tok) * chunk / probe
        chunks = -(-((resolution + 1) ** 3) // chunk)
    diffusion = conditioning + steps * step
    decoding = transformer + chunks * per_chunk
    return {
        "kind": "hy3dgen default",
        "model": model,
        "dtype": dtype_name,
        "batch": 1,
        "conditioning_s_per_image": conditioning,
        "step_s_per_image": step,
        "default_steps": steps,
        "diffusion_s_per_image": diffusion,
        "decoding_s": decoding,
        "chunks": chunks,
        "total_s": diffusion + decoding,
        "extrapolated": True,
        "peak_rss_bytes": rss.peak,
    }


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.1f}"


def markdown(rows: list[dict], notes: list[str]) -> str:
    lines = [
        *notes,
        "",
        "Diffusion, seconds per image (*: whole diffusion extrapolated from the steps measured; image → mesh adds "
        "the same run's decoding at 384, †: another run's, that run having none):",
        "",
        "| run | model | dtype | batch | conditioning | each step | steps (measured) | whole diffusion "
        "| image → mesh at 384 | peak RSS GiB | estimate GiB / image |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    # image -> mesh: the diffusion plus the first hierarchical decoding at 384 of the same model and dtype
    decodings = {}  # the same run's, else the first run's
    for r in rows:
        if r["kind"] == "decoding" and r["method"].startswith("hierarchical") and r["resolution"] == 384:
            decodings.setdefault((r.get("run"), r["model"], r["dtype"]), r)
            decodings.setdefault((None, r["model"], r["dtype"]), r)
    for r in rows:
        if r["kind"] != "diffusion":
            continue
        decoding = decodings.get((r.get("run"), r["model"], r["dtype"]))
        other_run = decoding is None
        decoding = decoding or decodings.get((None, r["model"], r["dtype"]))
        total = "-"
        if decoding is not None:
            marked = r["extrapolated"] or decoding["extrapolated"]
            total = f"{r['diffusion_s_per_image'] + decoding['decoding_s']:.0f}{'*' if marked else ''}"
            total += " †" if other_run else ""
        lines.append(
            f"| {r.get('run', '')} | {r['model']} | {r['dtype']} | {r['batch']} | {r['conditioning_s_per_image']:.1f} "
            f"| {r['step_s_per_image']:.1f} | {r['default_steps']} ({r['steps_measured']}) "
            f"| {r['diffusion_s_per_image']:.1f}{'*' if r['extrapolated'] else ''} | {total} "
            f"| {gib(r['peak_rss_bytes'])} | {gib(r['estimate_bytes_per_image'])} |"
        )
    lines += [
        "",
        "Decoding one image (*: the hierarchical extractor's queries on the analytic shape x the decoder's measured "
        "cost per query, plus the VAE transformer and the extractor's own time):",
        "",
        "| run | model | dtype | method | resolution | queries | µs / query | seconds | peak RSS GiB |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["kind"] != "decoding":
            continue
        queries = f"{r['queries']:,}" if r.get("queries") else "-"
        per_query = f"{r['us_per_query']:.1f}" if r.get("us_per_query") else "-"
        lines.append(
            f"| {r.get('run', '')} | {r['model']} | {r['dtype']} | {r['method']} | {r['resolution']} | {queries} "
            f"| {per_query} "
            f"| {r['decoding_s']:.1f}{'*' if r['extrapolated'] else ''} | {gib(r['peak_rss_bytes'])} |"
        )
    defaults = [r for r in rows if r["kind"] == "hy3dgen default"]
    if defaults:
        lines += [
            "",
            "hy3dgen's own `__call__` defaults on the same architecture (50 steps, dense decoding of 385³ points in "
            "chunks of 8,000, the checkpoint's VAE), extrapolated from one timed block of each kind and part of one "
            "decoder chunk:",
            "",
            "| run | model | dtype | conditioning s | each step s | diffusion s | decoding s (chunks) | total hours |",
            "|---|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in defaults:
            lines.append(
                f"| {r.get('run', '')} | {r['model']} | {r['dtype']} | {r['conditioning_s_per_image']:.0f}* "
                f"| {r['step_s_per_image']:.0f}* "
                f"| {r['diffusion_s_per_image']:.0f}* | {r['decoding_s']:.0f}* ({r['chunks']:,}) "
                f"| {r['total_s'] / 3600:.1f}* |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models: checks the script, not the speed")
    parser.add_argument("--models", default="", help="comma-separated variants to time")
    parser.add_argument("--dtypes", default="bfloat16", help="comma-separated: bfloat16, float32")
    parser.add_argument("--batches", default="1", help="comma-separated batch sizes")
    parser.add_argument("--measure-steps", type=int, default=1, help="steps run (the default steps if fewer)")
    parser.add_argument("--resolution", type=int, default=384, help="decoding grid")
    parser.add_argument("--chunk", type=int, default=8000, help="decoder points per call")
    parser.add_argument("--full-decode", action="store_true", help="run the decoder on every hierarchical query")
    parser.add_argument("--warmup", action="store_true", help="run one step on one image before timing")
    parser.add_argument("--no-decode", action="store_true")
    parser.add_argument("--flashvdm", action="store_true", help="also time hy3dgen's FlashVDM on the random field")
    parser.add_argument("--hy3dgen-default", default="", help="a variant to time hy3dgen's default call on")
    parser.add_argument("--hy3dgen-dtypes", default="float16,float32")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--tables", default="", help="comma-separated JSON files from earlier runs to tabulate")
    parser.add_argument("--write", type=Path, help="write the table into this Markdown file")
    args = parser.parse_args()
    torch.set_num_threads(worker_cores())
    size = 64 if args.tiny else 512
    if args.tiny and not args.models:
        args.models, args.batches, args.measure_steps = "hunyuan3d-dit-v2-mini-turbo", "1,2", 2
    rows: list[dict] = []

    def meta() -> dict:
        return {
            "command": "python bench/cpu_hunyuan.py " + " ".join(sys.argv[1:]),
            "threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "torch": torch.__version__,
        }

    def record(row: dict) -> None:
        """Print and keep a row, and rewrite --json at once: a run stopped by a time limit keeps its rows."""
        print(json.dumps(row), flush=True)
        rows.append(row)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"meta": meta(), "rows": rows}, indent=1))

    for model in filter(None, args.models.split(",")):
        for dtype in args.dtypes.split(","):
            start = time.perf_counter()
            pipeline = variant_pipeline(model, DTYPES[dtype], args.tiny)
            print(f"built {model} {dtype} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
            latents = None
            if args.warmup:  # one-time set-up (kernels, first touch of the weights) out of the first batch's figures
                sample_latents(pipeline, items_for(model, 1, size), [0], 1, get_variant(model).guidance_scale)
            for batch in (int(b) for b in args.batches.split(",")):
                steps = min(args.measure_steps, get_variant(model).steps)
                row, latents = bench_diffusion(pipeline, model, dtype, batch, steps, size)
                record(row)
            if not args.no_decode:
                resolution = 48 if args.tiny else args.resolution
                for row in bench_decoding(
                    pipeline, model, dtype, latents, resolution, args.chunk, args.full_decode, args.flashvdm
                ):
                    record(row)
            del pipeline
    if args.hy3dgen_default:
        for dtype in args.hy3dgen_dtypes.split(","):
            record(bench_hy3dgen_default(args.hy3dgen_default, dtype, args.tiny))
    runs = [{**json.loads(Path(p).read_text()), "label": Path(p).stem} for p in filter(None, args.tables.split(","))]
    if not runs:
        runs = [{"meta": meta(), "rows": rows, "label": "this run"}]
    notes = [
        f"- {run['label']}: `{run['meta']['command']}`; {run['meta']['threads']} threads, load average at the end "
        f"{', '.join(f'{x:.1f}' for x in run['meta']['load_average'])}."
        for run in runs
    ]
    table = markdown([{**row, "run": run["label"]} for run in runs for row in run["rows"]], notes)
    print(table)
    if args.write:
        write_section(args.write, MARKER, HEADING, table)


if __name__ == "__main__":
    main()
