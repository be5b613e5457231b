"""A video adapter on a small frozen language model (issue 27's video study): does Llama 3's
temporal aggregator, trained through `herd train` on clips this project renders, learn to say
which way a shape moves (or whether it grows or shrinks), which no single frame can tell?

Llama 3 (sections 7.2 and 7.4) adds video after images: the image encoder and its adapter are
trained first, then a temporal aggregator (a perceiver resampler merging consecutive frames'
encodings) and video cross-attention layers are trained on video-text pairs, everything before
them frozen. This script runs that recipe at toy scale on CPU:

1. Clips rendered with Pillow and written as mp4 (herd.data.video.write_video): 8 frames of 56
   pixels (one tile of 14-pixel patches), one circle, square or triangle of one of six colours
   (vision_adapter's) moving left, right, up or down, growing or shrinking. Every clip's middle
   frame is drawn from one distribution of places and sizes whatever the motion, so that frame
   alone cannot tell the motion. Caption: "a red circle moving left." / "a blue square growing."
   Four colour-shape pairs (vision_adapter.HELD_OUT_PAIRS) never occur in a training clip.
2. A byte-level BPE and a 2-block text model trained on every caption of both stages (all
   combinations, the held-out pairs' too), saved as a herd checkpoint (vision_adapter's
   train_text_model).
3. Stage 1, the image adapter: `herd train` with `[model] vision = {...}` (one 56-pixel tile) on
   still pictures of the training pairs captioned with size, colour, shape and place ("a small
   red circle at the top left."), the text model frozen: the encoder learns what and where.
4. Stage 2, the video adapter: `herd train` on the stage-1 checkpoint with `[model] video =
   {max_frames = 8, merge = 8, ...}` on clip-caption rows; only the video parts train (the
   temporal aggregator, the video cross-attention layers, <|video|>'s row). The baseline is the
   same run with `max_frames = 1, merge = 1`: it sees each clip's middle frame alone.
5. Greedy captions after `<|video|><|begin_of_text|>` for fresh clips of (a) the training pairs
   and (b) the held-out pairs: accuracy of the motion, colour, shape and whole caption, per
   motion, and which motion each was taken for, temporal aggregator against single frame.

    .venv/bin/python experiments/video_adapter.py            # ~10 minutes on 2 CPU cores alone
    .venv/bin/python experiments/video_adapter.py --quick    # a smoke test, under a minute

Results on stdout, in OUT/summary.json, OUT/summary.md and OUT/video_adapter.png; every held-out
caption in OUT/captions.jsonl. Measured: docs/video.md ("Study").
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as experiments/post_training.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # herd, when run from elsewhere
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling vision study

import torch
import vision_adapter as va  # pictures, the caption LM and `herd train` of the vision study
from PIL import Image, ImageDraw
from study_cli import parse_study, study_parser

import herd
from herd.data.video import write_video
from herd.errors import HerdError
from herd.model.video_model import ADDED_PARTS

SIDE, FRAMES = 56, 8  # one tile of 4 x 4 patches of 14 pixels; frames per clip
MOTIONS = ("left", "right", "up", "down", "growing", "shrinking")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# pixels per frame a shape moves, or its side grows (shrinks): 28 pixels over a clip, two of the
# encoder's 14-pixel patches (2.5 and 1.25 left motion at chance: the frozen encoder barely saw it)
STEP, GROWTH = 4.0, 2.0
SIZES = (10, 16)  # the side of the middle frame's shape, pixels
ROWS, COLUMNS = ("top", "middle", "bottom"), ("left", "centre", "right")  # stills' places
ATTRIBUTES = ("motion", "colour", "shape")
ARMS = ("temporal", "single_frame")
VIDEO_PARTS = tuple(f"{p}." for p in ADDED_PARTS)  # what stage 2 trains, as name prefixes
QUICK = dict(train_clips=36, test_clips=6, stills=48, lm_steps=20, still_steps=20, steps=20,
             log_every=10)  # fmt: skip


# --- clips, stills and captions --------------------------------------------------------------------


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def motion_caption(colour: str, shape: str, motion: str) -> str:
    verb = f"moving {motion}" if motion in DIRECTIONS else motion
    return f"{article(colour)} {colour} {shape} {verb}."


def still_caption(colour: str, shape: str, size: str, row: str, column: str) -> str:
    return f"a {size} {colour} {shape} at the {row} {column}."


def all_captions() -> list[str]:
    """Every sentence of both stages: the text model learns them all."""
    pairs = [(c, s) for c in va.COLOURS for s in va.SHAPES]
    stills = [still_caption(c, s, z, r, k) for c, s in pairs for z in ("small", "large")
              for r in ROWS for k in COLUMNS]  # fmt: skip
    return stills + [motion_caption(c, s, m) for c, s in pairs for m in MOTIONS]


def draw_frame(shape: str, colour: str, centre: tuple[float, float], side: float) -> Image.Image:
    """One SIDE x SIDE picture: the shape of `side` pixels centred at `centre`, on white."""
    image = Image.new("RGB", (SIDE, SIDE), (255, 255, 255))
    (x, y), h = centre, side / 2
    box = (round(x - h), round(y - h), round(x + h), round(y + h))
    va.draw_shape(ImageDraw.Draw(image), shape, box, va.COLOURS[colour])
    return image


def clip_frames(shape: str, colour: str, motion: str, rng: random.Random) -> list[Image.Image]:
    """FRAMES frames of the motion. The middle frame (index FRAMES // 2, the one a single-frame
    model samples) has a place and size drawn alike for every motion, wide enough from the edges
    for the whole path of any motion, so that frame is equally likely under each."""
    middle = FRAMES // 2
    side = rng.uniform(*SIZES)
    reach = middle * STEP + SIZES[1] / 2 + 1  # the farthest a moving shape's edge gets
    x, y = rng.uniform(reach, SIDE - reach), rng.uniform(reach, SIDE - reach)
    frames = []
    for i in range(FRAMES):
        t = i - middle
        if motion in DIRECTIONS:
            dx, dy = DIRECTIONS[motion]
            frames.append(draw_frame(shape, colour, (x + dx * STEP * t, y + dy * STEP * t), side))
        else:
            grow = GROWTH * t * (1 if motion == "growing" else -1)
            frames.append(draw_frame(shape, colour, (x, y), side + grow))
    return frames


def render_clips(folder: Path, name: str, pairs, n: int, seed: int) -> list[dict]:
    """`n` clips of pairs drawn uniformly from `pairs`, the motions in turn: rows for JSONL (the
    clip's path relative to `folder`)."""
    rng, rows = random.Random(seed), []
    (folder / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (colour, shape), motion = rng.choice(pairs), MOTIONS[i % len(MOTIONS)]
        path = f"{name}/{i:05d}.mp4"
        write_video(clip_frames(shape, colour, motion, rng), folder / path, fps=8)
        rows.append({"video": path, "text": motion_caption(colour, shape, motion),
                     "colour": colour, "shape": shape, "motion": motion})  # fmt: skip
    return rows


def draw_stills(folder: Path, name: str, pairs, n: int, seed: int) -> list[dict]:
    """`n` still pictures for stage 1: a shape of one of `pairs` anywhere in the frame, of any
    size a clip shows, captioned with its size, colour, shape and place (a 3 x 3 grid)."""
    rng, rows = random.Random(seed), []
    (folder / name).mkdir(parents=True, exist_ok=True)
    smallest, largest = SIZES[0] - GROWTH * FRAMES / 2, SIZES[1] + GROWTH * FRAMES / 2
    for i in range(n):
        colour, shape = rng.choice(pairs)
        side = rng.uniform(smallest, largest)
        x, y = (rng.uniform(side / 2 + 1, SIDE - side / 2 - 1) for _ in range(2))
        draw_frame(shape, colour, (x, y), side).save(folder / name / f"{i}.png")
        size = "small" if side < sum(SIZES) / 2 else "large"
        row, column = ROWS[int(3 * y / SIDE)], COLUMNS[int(3 * x / SIDE)]
        text = still_caption(colour, shape, size, row, column)
        rows.append({"image": f"{name}/{i}.png", "text": text})
    return rows


def read_caption(text: str) -> dict[str, str | None]:
    """The motion, colour and shape a caption states (None where it states none)."""
    words = text.replace(".", " ").split()

    def first(options) -> str | None:
        return next((w for w in words if w in options), None)

    return dict(motion=first(MOTIONS), colour=first(va.COLOURS), shape=first(va.SHAPES))


def read_still_caption(text: str) -> dict[str, str | None]:
    """The size, colour, shape and place a still's caption states (None where it states none)."""
    words = text.replace(".", " ").split()

    def first(options) -> str | None:
        return next((w for w in words if w in options), None)

    row, column = first(ROWS), first(COLUMNS)
    return dict(size=first(("small", "large")), colour=first(va.COLOURS),
                shape=first(va.SHAPES), place=f"{row} {column}" if row and column else None)  # fmt: skip


def score_stills(texts: list[str], rows: list[dict]) -> dict:
    """Stage 1's accuracy on fresh stills: each attribute and the whole caption."""
    right = dict.fromkeys(("size", "colour", "shape", "place", "exact"), 0)
    for text, row in zip(texts, rows, strict=True):
        said, truth = read_still_caption(text), read_still_caption(row["text"])
        for a in ("size", "colour", "shape", "place"):
            right[a] += said[a] == truth[a]
        right["exact"] += text.strip() == row["text"]
    return {k: v / len(rows) for k, v in right.items()} | {"pictures": len(rows)}


def write_rows(path: Path, rows: list[dict], keys: tuple[str, ...]) -> Path:
    path.write_text("".join(json.dumps({k: r[k] for k in keys}) + "\n" for r in rows))
    return path


# --- the two stages --------------------------------------------------------------------------------

VISION = (
    "{{ dim = {dim}, n_layers = 2, n_global_layers = 1, n_heads = 2, ffn_dim = {ffn}, "
    "image_size = 56, patch_size = 14, max_tiles = 1, aspect_ratios = [[1, 1]], "
    "feature_layers = [0, 1], cross_attention_layers = [{cross}] }}"
)
VIDEO = (
    "{{ max_frames = {frames}, merge = {frames}, latents = {latents}, layers = {layers}, "
    "n_heads = 4, every = {every} }}"
)


def run_config(args, path: Path, model: str, data: Path, steps: int, lr: float) -> Path:
    """A `herd train` config: `model` the [model] table's lines, the rest as the vision study's."""
    run = path.with_suffix("")
    path.write_text(
        f"[model]\n{model}\n\n"
        f'[data]\npath = "{data}"\nseq_len = 32\nbatch_size = {args.batch_size}\n'
        f"val_fraction = 0.0\nseed = {args.seed}\n\n"
        f"[optim]\nlr = {lr}\nwarmup_steps = 20\nweight_decay = 0.0\n\n"
        f'[train]\nvision_train = "adapter"\nsteps = {steps}\nlog_every = {args.log_every}\n'
        f"eval_every = {steps}\ncheckpoint_every = {steps}\n"
        f'device = "cpu"\nseed = {args.seed}\nout = "{run}"\n\n[stability]\nenabled = false\n'
    )
    return path


def train(args, config: Path, steps: int) -> tuple[Path, dict]:
    """vision_adapter.herd_train for a run of `steps` steps."""
    return va.herd_train(argparse.Namespace(**vars(args) | {"steps": steps}), config,
                         config.with_suffix(""))  # fmt: skip


def train_images(args, out: Path, text: Path, data: Path) -> tuple[Path, dict]:
    """Stage 1: the image encoder and cross-attention layers on the frozen text model."""
    cross = ", ".join(args.cross_attention_layers.split(","))
    vision = VISION.format(dim=args.vision_dim, ffn=2 * args.vision_dim, cross=cross)
    model = f'checkpoint = "{text}"\nvision = {vision}'
    config = run_config(args, out / "stage1_images.toml", model, data, args.still_steps, args.lr)
    return train(args, config, args.still_steps)


def train_video(args, out: Path, images: Path, data: Path, frames: int) -> tuple[Path, dict]:
    """Stage 2 on the stage-1 checkpoint (the paper's recipe: the image encoder and its
    cross-attention layers frozen): the temporal aggregator over `frames` frames (1: the
    single-frame baseline, the clip's middle frame), video cross-attention, <|video|>'s row."""
    video = VIDEO.format(
        frames=frames, latents=args.latents, layers=args.video_layers, every=args.video_every
    )
    model = f'checkpoint = "{images}"\nvideo = {video}'
    name = "stage2_temporal" if frames > 1 else "stage2_single_frame"
    config = run_config(args, out / f"{name}.toml", model, data, args.steps, args.video_lr)
    return train(args, config, args.steps)


# --- evaluation ------------------------------------------------------------------------------------


@torch.inference_mode()
def caption_clips(model, tok, folder: Path, rows: list[dict], batch: int = 32) -> list[str]:
    """Greedy captions after <|video|><|begin_of_text|>, in batches of clips."""
    from herd.model.video_model import Videos
    from herd.prompt_media import read_video_input

    texts = []
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        clips = [read_video_input(folder / r["video"], model.config) for r in chunk]
        videos = Videos(torch.cat([c.frames for c in clips]), torch.cat([c.counts for c in clips]))
        prompt = torch.tensor([[model.config.video_token_id, tok.bos_id]] * len(chunk))
        new = herd.generate(
            model, prompt, 16, temperature=0.0, stop_ids=[tok.eos_id], videos=videos
        )
        for ids in new.tolist():
            texts.append(tok.decode(ids[: ids.index(tok.eos_id)] if tok.eos_id in ids else ids))
    return texts


def score(texts: list[str], rows: list[dict]) -> dict:
    """Accuracy of each attribute and of the whole caption; per motion; and the confusion: for
    each true motion, how often each motion (or none) was said."""
    right = dict.fromkeys((*ATTRIBUTES, "exact"), 0)
    confusion = {m: dict.fromkeys((*MOTIONS, "none"), 0) for m in MOTIONS}
    for text, row in zip(texts, rows, strict=True):
        said = read_caption(text)
        for a in ATTRIBUTES:
            right[a] += said[a] == row[a]
        right["exact"] += text.strip() == row["text"]
        confusion[row["motion"]][said["motion"] or "none"] += 1
    per_motion = {m: c[m] / max(sum(c.values()), 1) for m, c in confusion.items()}
    return {k: v / len(rows) for k, v in right.items()} | {
        "clips": len(rows), "per_motion": per_motion, "confusion": confusion,
    }  # fmt: skip


def pooled(s: dict, arm: str) -> dict:
    """The confusion over both test splits."""
    return {m: {k: sum(s[split][arm]["confusion"][m][k] for split in ("seen", "held_out"))
                for k in (*MOTIONS, "none")} for m in MOTIONS}  # fmt: skip


def report(s: dict) -> str:
    names = {"seen": "fresh clips, training pairs", "held_out": "held-out colour-shape pairs"}
    labels = {"temporal": "temporal aggregator (8 frames)", "single_frame": "single frame"}
    lines = ["| clips | model | motion | colour | shape | exact caption | n |",
             "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for split, name in names.items():
        for arm in ARMS:
            r = s[split][arm]
            cells = " | ".join(f"{100 * r[k]:.1f}%" for k in (*ATTRIBUTES, "exact"))
            lines.append(f"| {name} | {labels[arm]} | {cells} | {r['clips']} |")
    lines += ["", "Motion accuracy per motion (both splits):", "",
              "| model | " + " | ".join(MOTIONS) + " |", "|---|" + "---:|" * len(MOTIONS)]  # fmt: skip
    for arm in ARMS:
        c = pooled(s, arm)
        cells = " | ".join(f"{100 * c[m][m] / max(sum(c[m].values()), 1):.0f}%" for m in MOTIONS)
        lines.append(f"| {labels[arm]} | {cells} |")
    for arm in ARMS:
        lines += ["", f"Confusion, {labels[arm]} (rows: true motion; columns: said):", "",
                  "| true \\ said | " + " | ".join((*MOTIONS, "none")) + " |",
                  "|---|" + "---:|" * (len(MOTIONS) + 1)]  # fmt: skip
        c = pooled(s, arm)
        lines += [f"| {m} | " + " | ".join(str(c[m][k]) for k in (*MOTIONS, "none")) + " |"
                  for m in MOTIONS]  # fmt: skip
    t1, set_ = s["image_training"], s["settings"]
    runs = "; ".join(
        f"{labels[arm]} {s['video_training'][arm]['seconds'] / 60:.1f} minutes, loss "
        f"{s['video_training'][arm]['first_loss']:.3f} -> {s['video_training'][arm]['final_loss']:.3f}"
        for arm in ARMS
    )
    lines += ["", f"Stage 1 (images): {set_['still_steps']} steps of {set_['batch_size']} stills "
              f"({s['stills']} pictures) in {t1['seconds'] / 60:.1f} minutes, loss "
              f"{t1['first_loss']:.3f} -> {t1['final_loss']:.3f}; on fresh stills it reads "
              + ", ".join(f"{k.replace('exact', 'whole caption')} {100 * v:.0f}%"
                          for k, v in s["stage1_fresh_stills"].items() if k != "pictures")
              + ". Stage 2 (video): "
              f"{set_['steps']} steps of {set_['batch_size']} clips ({s['train_clips']} clips): "
              f"{runs}; {s['video_trainable_parameters']:,} trainable of {s['parameters']:,} "
              f"parameters. {s['minutes']:.1f} minutes in all."]  # fmt: skip
    return "\n".join(lines)


def plot(s: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (*ATTRIBUTES, "exact")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    titles = {"seen": "fresh clips of training pairs", "held_out": "held-out colour-shape pairs"}
    labels = {"temporal": "temporal aggregator (8 frames)", "single_frame": "single frame"}
    for ax, (split, title) in zip(axes[:2], titles.items(), strict=True):
        xs = range(len(keys))
        for arm, dx in zip(ARMS, (-0.2, 0.2), strict=True):
            ax.bar([x + dx for x in xs], [s[split][arm][k] for k in keys], 0.4, label=labels[arm])
        ax.set_xticks(list(xs), [*ATTRIBUTES, "exact\ncaption"])
        ax.set_title(f"{title} (n={s[split]['temporal']['clips']})")
    ax, xs = axes[2], range(len(MOTIONS))
    for arm, dx in zip(ARMS, (-0.2, 0.2), strict=True):
        c = pooled(s, arm)
        ax.bar([x + dx for x in xs], [c[m][m] / max(sum(c[m].values()), 1) for m in MOTIONS],
               0.4, label=labels[arm])  # fmt: skip
    ax.axhline(1 / len(MOTIONS), color="grey", linestyle=":", label="chance")
    ax.set_xticks(list(xs), MOTIONS)
    ax.set_title("motion accuracy per motion (both splits)")
    axes[0].set_ylim(0, 1.18)
    axes[0].set_ylabel("held-out accuracy (greedy captions)")
    axes[0].legend(loc="upper left", fontsize=8, ncol=2)
    axes[2].legend(loc="upper left", fontsize=8, ncol=3)
    fig.suptitle("A video adapter on a frozen caption LM: temporal aggregator vs single frame")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the run ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = study_parser(__doc__, "runs/video_adapter")
    p.add_argument("--seed", type=int, default=0, help="seed of clips, models and order")
    p.add_argument("--train-clips", type=int, default=1200, help="training clips (stage 2)")
    p.add_argument("--test-clips", type=int, default=120, help="fresh clips per split")
    p.add_argument("--stills", type=int, default=2000, help="still pictures (stage 1)")
    p.add_argument(
        "--vocab", type=int, default=400, help="BPE vocabulary size (at most; 365: every word)"
    )
    p.add_argument("--dim", type=int, default=64, help="text model width")
    p.add_argument("--n-layers", type=int, default=2, help="text model blocks")
    p.add_argument("--lm-steps", type=int, default=200, help="text model steps (full batches)")
    p.add_argument("--vision-dim", type=int, default=32, help="image encoder width")
    p.add_argument("--cross-attention-layers", default="0,2",
                   help="places of the image cross-attention layers (vision_adapter's)")  # fmt: skip
    p.add_argument("--still-steps", type=int, default=2000, help="stage-1 steps (images)")
    p.add_argument("--steps", type=int, default=1500, help="stage-2 steps (video), each arm")
    p.add_argument("--batch-size", type=int, default=16, help="pictures or clips per step")
    p.add_argument("--lr", type=float, default=2e-2, help="stage-1 peak learning rate")
    p.add_argument("--video-lr", type=float, default=2e-2, help="stage-2 peak learning rate")
    p.add_argument("--latents", type=int, default=8, help="aggregator latents per clip")
    p.add_argument("--video-layers", type=int, default=2, help="aggregator layers")
    p.add_argument("--video-every", type=int, default=1,
                   help="a video cross-attention layer before every this many image ones")  # fmt: skip
    p.add_argument("--step", type=float, default=STEP, help="pixels a shape moves per frame")
    p.add_argument("--growth", type=float, default=GROWTH, help="pixels a side grows per frame")
    p.add_argument("--log-every", type=int, default=100, help="herd train's logging interval")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no training output")
    args = parse_study(p, argv, QUICK)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    global STEP, GROWTH  # the clips' motion, read by clip_frames
    STEP, GROWTH = args.step, args.growth
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    pairs = [(c, s) for c in va.COLOURS for s in va.SHAPES]
    seen = [p for p in pairs if p not in va.HELD_OUT_PAIRS]
    clips = out / "clips"
    still_rows = draw_stills(clips, "stills", seen, args.stills, args.seed)
    stills = write_rows(clips / "stills.jsonl", still_rows, ("image", "text"))
    still_tests = draw_stills(clips, "still_tests", seen, args.test_clips, args.seed + 4)
    train_rows = render_clips(clips, "train", seen, args.train_clips, args.seed + 1)
    data = write_rows(clips / "captions.jsonl", train_rows, ("video", "text"))
    n = args.test_clips
    tests = {"seen": render_clips(clips, "seen", seen, n, args.seed + 2),
             "held_out": render_clips(clips, "held_out", va.HELD_OUT_PAIRS, n, args.seed + 3)}  # fmt: skip

    text, lm_loss = va.train_text_model(args, out, all_captions())
    images, image_run = train_images(args, out, text, stills)
    tok = herd.load_tokenizer(text)
    read = va.caption_pictures(herd.load(images), tok, clips, still_tests)
    checkpoints, video_runs = {}, {}
    for arm, frames in zip(ARMS, (FRAMES, 1), strict=True):
        checkpoints[arm], video_runs[arm] = train_video(args, out, images, data, frames)
    model = herd.load(checkpoints["temporal"])
    summary = {
        "question": "does a temporal aggregator over a clip's frames, trained through herd train "
        "on a frozen image adapter and caption LM, say how a shape moves, which a single frame "
        "cannot tell?",
        "settings": {k: v for k, v in vars(args).items() if k not in ("quiet", "threads", "out")},
        "held_out_pairs": [list(p) for p in va.HELD_OUT_PAIRS],
        "stills": args.stills,
        "train_clips": len(train_rows),
        "parameters": sum(p.numel() for p in model.parameters()),
        "video_trainable_parameters": sum(p.numel() for n, p in model.named_parameters()
                                          if n.startswith(VIDEO_PARTS)),
        "text_model_loss": lm_loss,
        "image_training": image_run,
        "stage1_fresh_stills": score_stills(read, still_tests),
        "video_training": video_runs,
    }  # fmt: skip
    written = []
    for arm in ARMS:
        model = herd.load(checkpoints[arm])
        for split, rows in tests.items():
            texts = caption_clips(model, tok, clips, rows)
            summary.setdefault(split, {})[arm] = score(texts, rows)
            written += [{"split": split, "model": arm, **r, "caption": t}
                        for r, t in zip(rows, texts, strict=True)]  # fmt: skip
    summary["minutes"] = (time.perf_counter() - began) / 60
    text_report = report(summary)
    print("\n" + text_report)
    (out / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in written))
    (out / "summary.md").write_text(text_report + "\n", "utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    plot(summary, out / "video_adapter.png")
    print(f"\nwrote {out / 'summary.json'}, {out / 'summary.md'} and {out / 'video_adapter.png'}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except HerdError as e:
        sys.exit(f"error: {e}")
