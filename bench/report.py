"""Writing a benchmark's figures into docs/BENCHMARKS.md: each benchmark owns the text between its two markers."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, marker: str, heading: str, body: str) -> None:
    """Replace the text between `<!-- marker -->` and `<!-- /marker -->`, or append a `## heading` section."""
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n{block}\n"
    path.write_text(text)
