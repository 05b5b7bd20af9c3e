"""Our GLB files pass the Khronos glTF Validator (tools/gltf-validator, installed by `make setup`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import trimesh

from orfeas.pipeline.export import export_mesh, to_export_frame
from tests.pipeline.test_export import MESHES

VALIDATOR = Path(__file__).resolve().parents[2] / "tools" / "gltf-validator"


def validate_glb(path: Path) -> dict:
    """Run the Khronos glTF Validator on a GLB and return its JSON report; skip when it is not installed."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; install Node.js, then run `make setup`")
    if not (VALIDATOR / "node_modules" / "gltf-validator").is_dir():
        pytest.skip("the glTF validator is not installed; run `make setup`")
    done = subprocess.run(
        [node, str(VALIDATOR / "validate.mjs"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def issues(report: dict) -> list[str]:
    """The report's errors and warnings, one line each, for assertion messages."""
    return [
        f"{m['code']} at {m.get('pointer', '?')}: {m['message']}"
        for m in report["issues"]["messages"]
        if m["severity"] <= 1
    ]


def ragged_sphere() -> trimesh.Trimesh:
    """An icosphere with an unused vertex and a degenerate face, and its vertex normals already computed.

    trimesh exports cached normals, and leaves the normals of such vertices at zero.
    """
    sphere = trimesh.creation.icosphere(subdivisions=2)
    vertices = np.vstack([sphere.vertices, [[0.0, 0.0, 0.0]]])
    faces = np.vstack([sphere.faces, [[0, 0, 1]]])
    ragged = trimesh.Trimesh(vertices, faces, process=False)
    assert ragged.vertex_normals.shape == vertices.shape
    return ragged


@pytest.mark.parametrize("kind", sorted(MESHES))
def test_exported_glb_has_no_issues_at_all(tmp_path: Path, kind: str) -> None:
    (path,) = export_mesh(to_export_frame(MESHES[kind]()), tmp_path, kind, "glb")
    report = validate_glb(path)
    assert report["issues"]["numErrors"] == 0, issues(report)
    # Not even hints: bufferView targets are set, which trimesh leaves out.
    assert report["issues"]["messages"] == []


def test_exported_glb_of_a_ragged_mesh_has_no_errors(tmp_path: Path) -> None:
    (path,) = export_mesh(ragged_sphere(), tmp_path, "ragged", "glb")
    report = validate_glb(path)
    assert report["issues"]["numErrors"] == 0, issues(report)


def test_validator_catches_zero_normals_in_a_raw_trimesh_export(tmp_path: Path) -> None:
    path = tmp_path / "raw.glb"
    path.write_bytes(trimesh.exchange.gltf.export_glb(ragged_sphere()))
    report = validate_glb(path)
    codes = {m["code"] for m in report["issues"]["messages"] if m["severity"] == 0}
    assert "ACCESSOR_VECTOR3_NON_UNIT" in codes


def test_textured_glb_reports_its_texture(tmp_path: Path) -> None:
    (path,) = export_mesh(MESHES["textured"](), tmp_path, "textured", "glb")
    info = validate_glb(path)["info"]
    assert info["hasTextures"] is True
    assert info["maxUVs"] == 1
    assert {"pointer": "/images/0", "mimeType": "image/png", "storage": "buffer-view"}.items() <= next(
        r for r in info["resources"] if r["pointer"] == "/images/0"
    ).items()
