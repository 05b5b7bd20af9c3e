"""3D accuracy of the default generator against meshes whose shape is known.

    .venv/bin/python bench/accuracy_bench.py [--write docs/BENCHMARKS.md] [-O KEY=VALUE ...]

Every image of ../shared/gt/images/ (an orthographic render of ../shared/gt/placed/NAME.ply) goes through the
pipeline with default settings to a GLB, which ../shared/gt/score.py scores: Chamfer distance and F-score at 0.05
and 0.1 after centring the GLB on its bounding box and scaling its longest X/Y side to 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

from orfeas import GenerateOptions, Settings, generate, save_result
from orfeas.cli.generate import parse_generator_options
from orfeas.pipeline.generators import create_generator
from report import write_section

REPO = Path(__file__).resolve().parents[1]
GT = REPO.parent / "shared" / "gt"
HEADING = "3D accuracy of the default generator"
MARKER = "accuracy-bench"
# The two rows ../shared/gt/README.md reports for the same set, for comparison.
REFERENCES = [
    ("silhouette extruded to a constant depth of 0.3 (gt/README.md)", 0.067, 0.503, 0.751),
    ("sqrt-distance inflation of the silhouette (gt/README.md)", 0.075, 0.436, 0.692),
]


def load_scorer():
    """The scoring module shipped with the ground truth (kept there, not copied, so both stay in step)."""
    spec = importlib.util.spec_from_file_location("gt_score", GT / "score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def score_all(options: GenerateOptions) -> list[dict]:
    """Generate every ground-truth image with `options` and score it; one row per shape."""
    scorer = load_scorer()
    settings = Settings().pipeline()
    generator = create_generator(options.backend, settings)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for image in sorted((GT / "images").glob("*.png")):
            result = generate(image, options, settings, generator)
            glb = save_result(result, Path(tmp), image.stem)[0]
            truth = scorer.load(GT / "placed" / f"{image.stem}.ply")
            scores = scorer.scores(truth, scorer.normalise(scorer.load(glb)))
            rows.append({"shape": image.stem, **scores, "seconds": result.profile.total})
    return rows


def summarise(rows: list[dict]) -> dict:
    return {key: statistics.mean(row[key] for row in rows) for key in ("chamfer", "fscore@0.05", "fscore@0.1")}


def render(rows: list[dict], options: GenerateOptions) -> str:
    mean = summarise(rows)
    lines = [
        f"Command: `make bench` (`.venv/bin/python bench/accuracy_bench.py`), run {time.strftime('%Y-%m-%d')}; "
        f"generator `{options.backend}` with its default options.",
        "",
        "| shape | Chamfer ↓ | F@0.05 ↑ | F@0.1 ↑ |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['shape']} | {r['chamfer']:.4f} | {r['fscore@0.05']:.3f} | {r['fscore@0.1']:.3f} |" for r in rows]
    chamfer, f5, f10 = mean["chamfer"], mean["fscore@0.05"], mean["fscore@0.1"]
    lines.append(f"| **mean (ours)** | **{chamfer:.4f}** | **{f5:.3f}** | **{f10:.3f}** |")
    lines += [f"| {name} | {c:.3f} | {f5:.3f} | {f10:.3f} |" for name, c, f5, f10 in REFERENCES]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, help="Replace this benchmark's section in a markdown file.")
    parser.add_argument("-O", "--option", action="append", default=[], help="Generator option KEY=VALUE.")
    args = parser.parse_args()
    options = GenerateOptions(generator_options=parse_generator_options(args.option))
    rows = score_all(options)
    print(render(rows, options))
    print(json.dumps(summarise(rows)))
    if args.write:
        write_section(args.write, MARKER, HEADING, render(rows, options))


if __name__ == "__main__":
    main()
