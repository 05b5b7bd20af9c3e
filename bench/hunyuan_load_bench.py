"""Loading a full-size Hunyuan3D-2 checkpoint: hy3dgen's `from_single_file` against `hunyuan_loading`.

Writes the variant's full-size architecture (`hunyuan_random.model_config`, and for a -turbo variant its turbo VAE's
`vae_config`) with random weights as float16 safetensors in the users' layout under --root, then loads it as
`load_pipeline` does (the pipeline, then the turbo VAE in place of its own), each method in a fresh subprocess, in
interleaved rounds; each load reports its seconds and the process's peak RSS (`ru_maxrss`), with the RSS after the
imports. The files stay in the page cache between runs (just written), so reading them costs no disk time.

    python bench/hunyuan_load_bench.py --root /tmp/hyload --model hunyuan3d-dit-v2-mini-turbo --rounds 2 \
        --dtype bfloat16 --json /tmp/hyload-results.json --delete

--delete removes the written files at the end (about 3.6 GB for mini-turbo, 4.9 GB for v2-0-turbo).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("ours", "hy3dgen", "read")
"""hunyuan_loading, hy3dgen's from_single_file, and reading the files alone (64 MiB at a time, nothing kept)."""


def write_checkpoint(root: Path, model: str) -> Path:
    """The variant's full-size random model (and turbo VAE) as float16 safetensors under root; returns its folder.

    Each component is built in float32 (hy3dgen's modules), cast to float16 and saved before the next is built.
    """
    import torch
    import yaml
    from hy3dgen.shapegen.pipelines import instantiate_from_config
    from safetensors.torch import save_file

    from orfeas.pipeline.generators.hunyuan_random import model_config, vae_config
    from orfeas.pipeline.generators.hunyuan_variants import get_variant

    variant = get_variant(model)
    folder = root / variant.repo / variant.name
    folder.mkdir(parents=True, exist_ok=True)
    config = model_config(tiny=False, model=model)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    torch.manual_seed(0)
    tensors = {}
    for name in ("model", "vae", "conditioner"):
        module = instantiate_from_config(config[name]).half()
        tensors |= {f"{name}.{key}": value.detach().clone() for key, value in module.state_dict().items()}
        del module
    save_file(tensors, str(folder / "model.fp16.safetensors"))
    del tensors
    if variant.vae is not None:
        vae_folder = root / variant.vae_repo / variant.vae
        vae_folder.mkdir(parents=True, exist_ok=True)
        turbo = vae_config(tiny=False, model=model)
        (vae_folder / "config.yaml").write_text(yaml.safe_dump(turbo, sort_keys=False))
        vae = instantiate_from_config(turbo).half()
        save_file(
            {k: v.detach().clone() for k, v in vae.state_dict().items()}, str(vae_folder / "model.fp16.safetensors")
        )
    return folder


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def current_rss_gib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def read_files(files: list[Path]) -> float:
    """Seconds to read the files through once into one reused buffer."""
    buffer = bytearray(64 * 2**20)
    start = time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as file:
            while file.readinto(buffer):
                pass
    return time.perf_counter() - start


def load_once(method: str, root: Path, model: str, dtype_name: str) -> dict:
    """Load the model the way `method` does, in this process; the figures of that one load."""
    import torch
    from hy3dgen.shapegen import Hunyuan3DDiTFlowMatchingPipeline
    from hy3dgen.shapegen.models import ShapeVAE

    from orfeas.pipeline.generators.hunyuan_loading import pipeline_from_file, vae_from_file
    from orfeas.pipeline.generators.hunyuan_variants import get_variant

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    variant = get_variant(model)
    dtype = getattr(torch, dtype_name)
    checkpoint = root / variant.repo / variant.name / "model.fp16.safetensors"
    vae_checkpoint = root / variant.vae_repo / variant.vae / "model.fp16.safetensors" if variant.vae else None
    after_imports = current_rss_gib()
    files = [checkpoint] + ([vae_checkpoint] if vae_checkpoint else [])
    kwargs = {"device": "cpu", "dtype": dtype, "use_safetensors": True}
    start = time.perf_counter()
    if method == "read":
        return {
            "method": method,
            "model": model,
            "seconds": round(read_files(files), 1),
            "peak_rss_gib": round(peak_rss_gib(), 2),
        }
    if method == "ours":
        pipeline = pipeline_from_file(
            Hunyuan3DDiTFlowMatchingPipeline, str(checkpoint), str(checkpoint.parent / "config.yaml"), **kwargs
        )
        if vae_checkpoint is not None:
            pipeline.vae = vae_from_file(
                ShapeVAE, str(vae_checkpoint), str(vae_checkpoint.parent / "config.yaml"), **kwargs
            )
    else:
        pipeline = Hunyuan3DDiTFlowMatchingPipeline.from_single_file(
            str(checkpoint), str(checkpoint.parent / "config.yaml"), **kwargs
        )
        if vae_checkpoint is not None:
            pipeline.vae = ShapeVAE.from_single_file(
                str(vae_checkpoint), str(vae_checkpoint.parent / "config.yaml"), **kwargs
            )
    seconds = time.perf_counter() - start
    modules = (pipeline.model, pipeline.vae, pipeline.conditioner)
    model_bytes = sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))
    return {
        "method": method,
        "model": model,
        "dtype": dtype_name,
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(peak_rss_gib(), 2),
        "rss_after_imports_gib": round(after_imports, 2),
        "rss_loaded_gib": round(current_rss_gib(), 2),
        "model_gib": round(model_bytes / 2**30, 2),
        "files_gib": round(sum(f.stat().st_size for f in files) / 2**30, 2),
        "threads": torch.get_num_threads(),
    }


def run_rounds(args: argparse.Namespace) -> list[dict]:
    """Each method in a fresh subprocess per round, their order alternating between rounds."""
    results = []
    for round_index in range(args.rounds):
        order = args.methods if round_index % 2 == 0 else args.methods[::-1]
        for method in order:
            load_before = os.getloadavg()
            command = [sys.executable, __file__, "--root", str(args.root), "--model", args.model]
            command += ["--dtype", args.dtype, "--one", method]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            result |= {"round": round_index + 1, "load_average_before": [round(x, 2) for x in load_before]}
            result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root", type=Path, required=True, help="where the random checkpoint is written ($HY3DGEN_MODELS layout)"
    )
    parser.add_argument("--model", default="hunyuan3d-dit-v2-mini-turbo")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--methods", type=lambda text: tuple(text.split(",")), default=METHODS, help="comma-separated")
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument("--delete", action="store_true", help="remove --root at the end")
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)  # a single load, in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(load_once(args.one, args.root, args.model, args.dtype)))
        return
    try:
        from orfeas.pipeline.generators.hunyuan_variants import get_variant

        if not (args.root / get_variant(args.model).repo / args.model / "model.fp16.safetensors").exists():
            start = time.perf_counter()
            write_checkpoint(args.root, args.model)
            print(json.dumps({"written": str(args.root), "seconds": round(time.perf_counter() - start, 1)}), flush=True)
        results = run_rounds(args)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    finally:
        if args.delete:
            shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
