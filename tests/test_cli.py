"""The `orfeas generate` command, run as a user runs it: a real subprocess."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import trimesh

from tests.synthetic import EXAMPLES

ORFEAS = str(Path(sys.executable).with_name("orfeas"))


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ORFEAS, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def test_all_formats_and_the_json_report(tmp_path):
    images = [EXAMPLES / "chair.png", EXAMPLES / "teapot.png"]
    out = tmp_path / "out"
    proc = run("generate", *map(str, images), "--out", str(out), "--format", "glb,obj,stl,ply", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [Path(line["image"]).name for line in lines] == ["chair.png", "teapot.png"]
    for stem in ("chair", "teapot"):
        for ext in ("glb", "obj", "mtl", "stl", "ply", "json"):
            assert (out / f"{stem}.{ext}").is_file(), f"{stem}.{ext}"
        report = json.loads((out / f"{stem}.json").read_text())
        assert report["generator"] == "inflate"
        assert report["parameters"]["resolution"] == 192  # the inflate default
        assert report["watertight"] is True
        assert report["faces"] > 0 and report["vertices"] > 0
        assert {"image_loading", "shape_generation", "export"} <= set(report["profile"]["stages"])
        glb = trimesh.load(out / f"{stem}.glb", force="mesh")
        assert len(glb.faces) == report["faces"]
    stl = (out / "chair.stl").read_bytes()
    assert len(stl) == 84 + 50 * struct.unpack("<I", stl[80:84])[0]  # binary STL


def test_preview_renders_a_written_model(tmp_path):
    proc = run("generate", str(EXAMPLES / "chair.png"), "--out", str(tmp_path), "--faces", "5000")
    assert proc.returncode == 0, proc.stderr
    png = tmp_path / "chair_preview.png"
    proc = run("preview", str(tmp_path / "chair.glb"), "--out", str(png), "--size", "128")
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    assert Image.open(png).size == (128, 128)
    assert run("preview", str(tmp_path / "chair.json")).returncode == 1


def test_file_names_with_spaces_are_made_safe(tmp_path):
    image = tmp_path / "my chair (1).png"
    image.write_bytes((EXAMPLES / "chair.png").read_bytes())
    proc = run("generate", str(image), "--out", str(tmp_path / "out"), "--faces", "2000")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["my_chair__1_.glb", "my_chair__1_.json"]


def test_table_and_options(tmp_path):
    proc = run(
        "generate", str(EXAMPLES / "robot.png"), "--out", str(tmp_path), "--resolution", "96",
        "--faces", "3000", "--no-texture", "--format", "ply", "-O", "depth=0.5",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "robot.ply" in proc.stdout and "faces" in proc.stdout
    report = json.loads((tmp_path / "robot.json").read_text())
    assert report["faces"] <= 3000
    assert report["parameters"]["texture"] is False
    assert report["parameters"]["generator_options"] == {"depth": 0.5}


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = (EXAMPLES / "chair.png").read_bytes()
    files = {
        "not an image": ("notes.png", b"hello, this is text"),
        "truncated": ("cut.png", good[: len(good) // 2]),
        "empty": ("empty.png", b""),
    }
    paths = {}
    for label, (name, data) in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        paths[label] = path
    paths["missing"] = tmp_path / "missing.png"
    return paths


@pytest.mark.parametrize("label", ["not an image", "truncated", "empty", "missing"])
def test_bad_input_gives_a_message_a_nonzero_exit_and_no_files(tmp_path, label):
    bad = _bad_files(tmp_path)[label]
    out = tmp_path / "out"
    proc = run("generate", str(bad), "--out", str(out), "--format", "glb,obj,stl,ply")
    assert proc.returncode != 0
    assert "error" in proc.stderr and bad.name in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_an_image_over_the_pixel_cap_is_refused(tmp_path):
    out = tmp_path / "out"
    proc = run("generate", str(EXAMPLES / "chair.png"), "--out", str(out), env={"ORFEAS_MAX_IMAGE_PIXELS": "10000"})
    assert proc.returncode == 1
    assert "too large" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_good_images_are_kept_when_one_of_several_is_bad(tmp_path):
    out = tmp_path / "out"
    bad = _bad_files(tmp_path)["truncated"]
    proc = run("generate", str(EXAMPLES / "chair.png"), str(bad), "--out", str(out), "--json")
    assert proc.returncode == 1
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert "error" in lines[1] and "faces" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["chair.glb", "chair.json"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "fbx"], "fbx"),
        (["--resolution", "4"], "resolution"),
        (["--backend", "nope"], "nope"),
        (["-O", "depth=-1"], "depth"),
    ],
)
def test_bad_options_are_refused_before_any_work(tmp_path, args, message):
    proc = run("generate", str(EXAMPLES / "chair.png"), "--out", str(tmp_path / "out"), *args)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
