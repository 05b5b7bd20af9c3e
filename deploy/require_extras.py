"""Fail an image build when the orfeas wheel lacks a requested pip extra.

pip only warns about an unknown extra and installs the package without it, which would give, say, a `HUNYUAN=1` image
that cannot run Hunyuan3D. Usage: `python require_extras.py WHEEL_DIR postgres,hunyuan` (standard library only).
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path


def provided_extras(wheel: Path) -> set[str]:
    """The `Provides-Extra` names in a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(name).decode().splitlines()
    return {line.split(":", 1)[1].strip() for line in lines if line.startswith("Provides-Extra:")}


def missing_extras(wheel_dir: Path, requested: str) -> tuple[Path, list[str]]:
    """The orfeas wheel in `wheel_dir` and the requested (comma-separated) extras it does not provide."""
    (wheel,) = sorted(wheel_dir.glob("orfeas-*.whl"))
    provided = provided_extras(wheel)
    wanted = [extra.strip() for extra in requested.split(",") if extra.strip()]
    return wheel, [extra for extra in wanted if extra not in provided]


def main(argv: list[str]) -> int:
    wheel, missing = missing_extras(Path(argv[1]), argv[2] if len(argv) > 2 else "")
    if missing:
        print(f"error: {wheel.name} has no extra {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
