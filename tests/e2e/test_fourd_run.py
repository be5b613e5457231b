"""`herd 4d --oracle` end to end at toy size (herd/fourd/cli.py, optimise.py, outputs.py): the run
folder (config, metrics of all three stages, atomic checkpoints), a resumed run that equals an
unbroken one bit for bit, the renders (MP4 and GIF), the viewer page and its frames, meshes as
OBJ, the loss plot; bad options are one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from tests.e2e.cli_runner import herd_cli_inprocess, one_line_error

TINY = ["--steps", "3,4,2", "--resolution", "8", "--sr-resolution", "12", "--frames", "3",
        "--samples", "8", "--render-size", "16", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    out = tmp_path_factory.mktemp("fourd") / "run"
    proc = herd_cli_inprocess("4d", "a red ball", "--oracle", "--out", str(out), "--mesh", *TINY)
    assert proc.returncode == 0, proc.stderr
    return out


def test_run_folder_renders_viewer_meshes(unbroken):
    out = unbroken
    config = json.loads((out / "config.json").read_text())
    assert config["prompt"] == "a red ball" and config["steps"] == [3, 4, 2]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(9))
    assert [r["stage"] for r in rows] == ["static"] * 3 + ["dynamic"] * 4 + ["sr"] * 2
    assert "static_l1" not in rows[0] and "static_l1" in rows[3]
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved == ["step-000003", "step-000007", "step-000009"]  # each stage's end
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 9 and summary["held_out_psnr"] > 5.0
    with Image.open(out / "renders" / "orbit.gif") as gif:
        assert gif.n_frames == 48 and gif.size == (16, 16)
    assert (out / "renders" / "orbit.mp4").stat().st_size > 0
    page = (out / "viewer" / "index.html").read_text()
    assert 'type="range"' in page and "a red ball" in page
    assert len(list((out / "viewer" / "frames").glob("a*_t*.png"))) == 12 * 8
    assert (out / "plots" / "loss.png").stat().st_size > 0
    for mesh in summary.get("meshes", []):
        lines = Path(mesh).read_text().splitlines()
        verts = [x for x in lines if x.startswith("v ")]
        faces = [x for x in lines if x.startswith("f ")]
        assert verts and faces and len(verts[0].split()) == 7  # x y z r g b
        assert max(int(i) for f in faces for i in f.split()[1:]) <= len(verts)


def test_resume_continues_exactly(unbroken, tmp_path):
    out = tmp_path / "broken"
    args = ["4d", "a red ball", "--oracle", "--out", str(out)]
    # a run broken after its static stage: run it, delete the later checkpoints, resume
    assert herd_cli_inprocess(*args, *TINY).returncode == 0
    for name in ("step-000007", "step-000009"):
        for f in (out / "checkpoints" / name).iterdir():
            f.unlink()
        (out / "checkpoints" / name).rmdir()
    proc = herd_cli_inprocess(*args, *TINY, "--resume")
    assert proc.returncode == 0, proc.stderr
    a = load_file(str(unbroken / "checkpoints" / "step-000009" / "field.safetensors"))
    b = load_file(str(out / "checkpoints" / "step-000009" / "field.safetensors"))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(9))  # no step logged twice


def test_bad_options_are_one_line(tmp_path):
    def run(*flags):
        return herd_cli_inprocess("4d", "a ball", "--out", str(tmp_path / "x"), *flags, check=False)

    one_line_error(run("--oracle", "--steps", "3,4"), "--steps '3,4': expected three counts")
    one_line_error(run(), "--prior is required")
    one_line_error(run("--prior", str(tmp_path), "--resolution", "12"), "multiple of 8")
    one_line_error(run("--oracle", "--frames", "0"), "--frames 0: expected >= 1")
    one_line_error(run("--oracle", "--resume", *TINY), "no run to resume")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    one_line_error(run("--oracle", *TINY), "not empty (pass --resume")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_diffusers_priors_drive_all_three_stages(tmp_path):
    """Tiny random text-to-video and text-to-image pipelines (diffusers' save_pretrained layout)
    as --prior and --image-prior: every stage runs on them and moves the field."""
    from herd.fourd.hexplane import FieldConfig, HexPlaneField
    from tests.fourd_pipelines import tiny_image_pipeline, tiny_video_pipeline

    video = tiny_video_pipeline(tmp_path / "video")
    image = tiny_image_pipeline(tmp_path / "image")
    small = ["--resolution", "16", "--sr-resolution", "24", "--frames", "2", "--samples", "6",
             "--render-size", "16", "--no-progress"]  # fmt: skip
    out = tmp_path / "corgi"
    proc = herd_cli_inprocess("4d", "a corgi", "--prior", str(video), "--image-prior", str(image),
                              "--out", str(out), "--steps", "1,2,1", *small)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["static", "dynamic", "dynamic", "sr"]
    assert all(r["sds_grad_norm"] > 0 for r in rows)
    trained = load_file(str(out / "checkpoints" / "step-000004" / "field.safetensors"))
    fresh = HexPlaneField(FieldConfig()).state_dict()
    assert any(not bool((trained[k] == fresh[k]).all()) for k in fresh)
    # without an image prior the static stage scores still clips with the video prior
    out = tmp_path / "still"
    proc = herd_cli_inprocess("4d", "a corgi", "--prior", str(video), "--out", str(out),
                              "--steps", "1,0,0", *small)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    one_line_error(
        herd_cli_inprocess("4d", "a corgi", "--prior", str(image), "--out", str(tmp_path / "x"),
                           "--steps", "1,0,0", *small, check=False),
        "a text-to-image pipeline, given as the video prior",
    )  # fmt: skip
