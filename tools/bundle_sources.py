"""The SHA-256 of what the studio bundle is built from (web/src/*.js, web/package.json, web/package-lock.json).

`make studio` records it beside the bundle (src/orfeas/web/static/app.js.sources); tests/test_bundle.py fails when
web/src changed and the committed bundle was not rebuilt.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sources_digest(repo: Path = REPO) -> str:
    digest = hashlib.sha256()
    web = repo / "web"
    files = [*sorted((web / "src").glob("*.js")), web / "package.json", web / "package-lock.json"]
    for path in files:
        if path.exists():
            digest.update(path.relative_to(repo).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


if __name__ == "__main__":
    print(sources_digest(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO))
