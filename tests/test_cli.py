"""The `orfeas generate` command, run as a user runs it: a real subprocess."""

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import trimesh

from tests.synthetic import EXAMPLES

ORFEAS = str(Path(sys.executable).with_name("orfeas"))


def run(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ORFEAS, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}, cwd=cwd
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The command failed with exactly one line on stderr, an error, and no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


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
    refused = run("preview", str(tmp_path / "chair.json"))
    assert refused.returncode == 2 and "is not a model file" in refused.stderr


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


def test_clashing_stems_get_numbered_outputs_and_say_so(tmp_path):
    from PIL import Image

    png, jpg = tmp_path / "mug.png", tmp_path / "mug.jpg"
    png.write_bytes((EXAMPLES / "chair.png").read_bytes())
    Image.open(png).convert("RGB").save(jpg)
    out = tmp_path / "out"
    proc = run("generate", str(png), str(jpg), "--out", str(out), "--faces", "2000", "--json")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["mug-2.glb", "mug-2.json", "mug.glb", "mug.json"]
    assert f"{jpg} → mug-2.*" in proc.stderr
    assert json.loads((out / "mug-2.json").read_text())["faces"] > 0


@pytest.mark.parametrize(
    ("where", "message"),
    [("out-file", "is a file: name a folder"), ("folder-input", "is a folder: pass the images in it")],
)
def test_bad_paths_are_one_line_before_any_work(tmp_path, where, message):
    taken = tmp_path / "taken.txt"
    taken.write_text("not a folder")
    args = [str(EXAMPLES / "chair.png"), "--out", str(taken)] if where == "out-file" else [str(tmp_path)]
    proc = run("generate", *args)
    assert proc.returncode == 2
    assert message in one_error_line(proc)
    assert taken.read_text() == "not a folder"


def test_an_error_names_the_file_once(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    line = one_error_line(run("generate", str(bad), "--out", str(tmp_path / "out")))
    assert line.count("notes.png") == 1, line


@pytest.mark.parametrize("name", ["notes.txt", "folder", "missing.glb"])
def test_preview_refuses_what_is_not_a_model_in_one_line(tmp_path, name):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "folder").mkdir()
    proc = run("preview", str(tmp_path / name), "--out", str(tmp_path / "p.png"))
    assert proc.returncode == 2
    one_error_line(proc)
    assert not (tmp_path / "p.png").exists()


def test_preview_renders_an_obj_in_its_texture_like_the_glb(tmp_path):
    import numpy as np
    from PIL import Image

    proc = run("generate", str(EXAMPLES / "chair.png"), "--out", str(tmp_path), "--faces", "5000", "-f", "glb,obj")
    assert proc.returncode == 0, proc.stderr
    pictures = {}
    for fmt in ("glb", "obj"):
        png = tmp_path / f"{fmt}.png"
        assert run("preview", str(tmp_path / f"chair.{fmt}"), "--out", str(png), "--size", "128").returncode == 0
        pictures[fmt] = np.asarray(Image.open(png).convert("RGB")).astype(int)
    # the same colours, not a plain grey: the mean difference is small next to the picture's own spread
    assert np.abs(pictures["obj"] - pictures["glb"]).mean() < 0.2 * pictures["glb"].std()
    assert pictures["obj"].reshape(-1, 3).std(axis=0).min() > 20


@pytest.mark.parametrize("command", [["generate"], ["preview"], ["agent", "generate"], ["agents", "list"]])
def test_help_shows_placeholders_not_python_types(command):
    proc = run(*command, "--help", env={"COLUMNS": "100"})
    assert proc.returncode == 0
    assert "<list[" not in proc.stdout and "<bool>" not in proc.stdout and "<str>" not in proc.stdout, proc.stdout
    assert not re.search(r"(^|\s)\.(\s|$)", proc.stdout, re.M), proc.stdout  # a lone "." left of eaten markup


def test_generate_help_states_the_resolution_default():
    assert "the generator's; inflate 192" in run("generate", "--help", env={"COLUMNS": "200"}).stdout


def test_agent_generate_takes_backend_seed_and_generator_options():
    text = run("agent", "generate", "--help", env={"COLUMNS": "200"}).stdout
    assert "--backend" in text and "--seed" in text and "-O" in text


def test_agents_say_which_database_and_warn_when_they_create_one(tmp_path):
    proc = run("agents", "create", "robot-with-a-long-name", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"warning: created {tmp_path / 'orfeas-data'} with a new database" in proc.stderr.replace("\n", "")
    assert "database: sqlite:///orfeas-data/orfeas.db" in proc.stderr
    key_id = proc.stdout.split("key_id: ")[1].split()[0]

    again = run("agents", "list", cwd=tmp_path, env={"COLUMNS": "80"})
    assert "warning" not in again.stderr and "database: sqlite:///orfeas-data/orfeas.db" in again.stderr
    assert key_id in again.stdout  # never cut
    assert max(len(line) for line in again.stdout.splitlines()) <= 80
    [record] = [json.loads(line) for line in run("agents", "list", "--json", cwd=tmp_path).stdout.splitlines()]
    assert record["key_id"] == key_id and record["created_at"].endswith("+00:00")
    assert "at (UTC)" in run("agents", "audit", cwd=tmp_path, env={"COLUMNS": "120"}).stdout
