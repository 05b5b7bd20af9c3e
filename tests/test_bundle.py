"""The committed studio bundle is built from the committed sources: editing web/src without `make studio` fails
here (the bundle records the digest of its sources when it is built)."""

from __future__ import annotations

from tools.bundle_sources import sources_digest

from tests.synthetic import REPO

RECORDED = REPO / "src" / "orfeas" / "web" / "static" / "app.js.sources"


def test_the_bundle_was_built_from_the_current_sources():
    assert RECORDED.read_text().strip() == sources_digest(REPO), (
        "web/src changed since src/orfeas/web/static/app.js was built: run `make studio` and commit both"
    )
