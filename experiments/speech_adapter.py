"""A speech adapter on a small frozen language model (issue 27's speech study): does a Conformer
encoder and adapter, trained through `herd train` on words spoken by espeak-ng, learn to
transcribe voices it never heard, where the frozen text model alone can only guess?

Llama 3 (section 8) adds speech compositionally: a frozen language model reads the speech
adapter's frames as token embeddings between two new special tokens. This script runs that
recipe at toy scale on CPU:

1. Clips synthesised with Debian's espeak-ng: one to three digit words ("seven four two"), in
   six English accents (en, en-us, Scottish, RP, Caribbean, Lancaster) with espeak's voice
   variants (timbres), at random speeds (130-190 words per minute) and pitches (30-70). Two
   variants (HELD_OUT_VARIANTS) are never heard in training: their clips test unseen voices.
2. A byte-level BPE and a 2-block text model trained on every transcript (all 1,110 digit
   sequences) written as "seven four two<|begin_of_text|>repeat: seven four two": it learns to
   repeat what came before BOS, as a pretrained LM copies from its context (the paper prompts
   "Repeat after me"); saved as a herd checkpoint.
3. `herd train` (the CLI, in a subprocess) with `[model] speech = {...}` on that checkpoint:
   the text model frozen, a small Conformer (stacking 4 frames, 2 blocks) and the adapter
   (stride-2 convolution, a rotary layer, a projection) trained on
   `<|speech_start|><|speech|>...<|speech_end|><|begin_of_text|>repeat: seven four
   two<|end_of_text|>`: the clip stands where the words stood.
4. Greedy transcripts after the clip, <|begin_of_text|> and the cue "repeat:" for fresh clips of
   training voices and of the held-out voices: word error rate (word-level edit distance over the reference's
   words) and exact transcripts, against the text model alone (no clip: the trained model then
   is its text model, which can only write its likeliest transcript).

    .venv/bin/python experiments/speech_adapter.py            # ~15 minutes on 2 CPU cores
    .venv/bin/python experiments/speech_adapter.py --quick    # a smoke test, seconds

Results on stdout, in OUT/summary.json and OUT/summary.md; every held-out transcript in
OUT/transcripts.jsonl. Measured: docs/multimodal.md ("Speech study").
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as experiments/post_training.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # herd, when run from elsewhere

import torch
from study_cli import parse_study, study_parser
from vision_adapter import herd_train  # the sibling study's `herd train` runner

import herd
from herd.checkpoint.io import save_herd_folder
from herd.data.audio import log_mel, read_audio
from herd.errors import HerdError
from herd.model.speech_model import Audio, speech_prompt
from herd.vocab.bpe import train_bpe

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
HELD_OUT_VARIANTS = ("m4", "f3")
QUICK = dict(train_clips=24, test_clips=4, steps=4, lm_steps=5, batch_size=4, log_every=2,
             speech_dim=16, speech_layers=1)  # fmt: skip


CUE = "repeat:"  # what follows a clip, as the paper's "Repeat after me" prompts


def transcripts() -> list[str]:
    return [" ".join(words) for n in (1, 2, 3) for words in itertools.product(DIGITS, repeat=n)]


def lm_text(tok, said: str) -> list[int]:
    """What the text model learns: the words, then BOS, the cue and the words again. It learns
    to repeat what came before BOS, as a pretrained LM can copy from its context; the adapter
    then only has to make a clip read like the words (its frames stand where they stood)."""
    return tok.encode(said) + tok.encode(f"{CUE} {said}", bos=True, eos=True)


def speak(folder: Path, name: str, n: int, variants, seed: int) -> list[dict]:
    """n clips of random digit words in random voices of `variants`: rows for herd train."""
    if shutil.which("espeak-ng") is None:
        raise HerdError("espeak-ng not found (apt-get install espeak-ng; `make test` does)")
    rng = random.Random(seed)
    (folder / name).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 3)))
        voice = f"{rng.choice(ACCENTS)}+{rng.choice(variants)}"
        path = folder / name / f"{i}.wav"
        speed, pitch = rng.randint(130, 190), rng.randint(30, 70)
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
            check=True, capture_output=True,
        )  # fmt: skip
        rows.append({"audio": f"{name}/{i}.wav", "text": f"{CUE} {text}", "said": text,
                     "voice": voice})  # fmt: skip
    return rows


def train_text_model(args, out: Path) -> Path:
    """A BPE and a small LM trained on every transcript (full batches, AdamW)."""
    texts = transcripts()
    (out / "transcripts.txt").write_text("\n".join(f"{t} {CUE} {t}" for t in texts) + "\n")
    folder = train_bpe([out / "transcripts.txt"], args.vocab, out / "tokenizer", 2, True, False)
    tok = herd.load_tokenizer(folder)
    config = herd.ModelConfig(
        vocab_size=tok.vocab_size, dim=args.dim, n_layers=2, n_heads=4, n_kv_heads=2,
        ffn_dim=2 * args.dim, max_seq_len=128,
    )  # fmt: skip
    torch.manual_seed(args.seed)
    model = herd.build_model(config, seed=args.seed)
    seqs = [lm_text(tok, t) for t in texts]
    width = max(map(len, seqs)) - 1
    x = torch.zeros(len(seqs), width, dtype=torch.long)
    y = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s) - 1], y[i, : len(s) - 1] = torch.tensor(s[:-1]), torch.tensor(s[1:])
    opt = torch.optim.AdamW(model.parameters(), lr=args.lm_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.lm_steps)
    for _ in range(args.lm_steps):
        loss = model(x, targets=y) / (y != -100).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return save_herd_folder(config, model.state_dict(), out / "text", tok.files())


@torch.inference_mode()
def copy_accuracy(text: Path, n: int, seed: int) -> float:
    """How often the text model repeats a transcript given as text before BOS: the skill the
    adapter relies on (a clip then only has to read like its words)."""
    model, tok = herd.load(text).eval(), herd.load_tokenizer(text)
    chosen = random.Random(seed).sample(transcripts(), n)
    right = 0
    for said in chosen:
        new = herd.generate(model, tok.encode(said) + tok.encode(CUE, bos=True), 16,
                            stop_ids=[tok.eos_id])  # fmt: skip
        right += tok.decode([t for t in new if t != tok.eos_id]).strip() == said
    return right / n


SPEECH = (
    "{{ n_mels = 80, stack = 4, dim = {dim}, n_layers = {layers}, n_heads = 4, "
    "ffn_dim = {ffn}, conv_kernel = 7, adapter_kernel = 3, adapter_stride = 2, max_frames = 500 }}"
)


def train_adapter(args, out: Path, text: Path, data: Path) -> tuple[Path, dict]:
    """`herd train` with [model] speech on the frozen text checkpoint, as a user runs it."""
    run = out / "run"
    config = out / "speech_adapter.toml"
    speech = SPEECH.format(dim=args.speech_dim, layers=args.speech_layers, ffn=2 * args.speech_dim)
    config.write_text(
        f'[model]\ncheckpoint = "{text}"\nspeech = {speech}\n\n'
        f'[data]\npath = "{data}"\nseq_len = 64\nbatch_size = {args.batch_size}\n'
        f"val_fraction = 0.0\nseed = {args.seed}\n\n"
        f"[optim]\nlr = {args.lr}\nwarmup_steps = 50\nweight_decay = 0.0\n\n"
        f"[train]\nsteps = {args.steps}\nlog_every = {args.log_every}\n"
        f"eval_every = {args.steps}\ncheckpoint_every = {args.steps}\n"
        f'device = "cpu"\nseed = {args.seed}\nout = "{run}"\n\n[stability]\nenabled = false\n'
    )
    return herd_train(args, config, run)


@torch.inference_mode()
def transcribe(model, tok, folder: Path | None, rows: list[dict]) -> list[str]:
    """Greedy transcripts after the clip and <|begin_of_text|> (the text model alone after
    <|begin_of_text|> when `folder` is None)."""
    texts = []
    for row in rows:
        prompt, audio = tok.encode(CUE, bos=True), None
        if folder is not None:
            wave = read_audio(folder / row["audio"])
            features = log_mel(wave)
            prompt = speech_prompt(model.config, len(wave)) + prompt
            audio = Audio(features[None, None], torch.tensor([[features.shape[0]]]))
        new = herd.generate(model, prompt, 16, stop_ids=[tok.eos_id], audio=audio)
        texts.append(tok.decode(new[: new.index(tok.eos_id)] if tok.eos_id in new else new))
    return texts


def word_errors(said: str, truth: str) -> int:
    """Word-level Levenshtein distance."""
    a, b = said.split(), truth.split()
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        row = [i]
        for j, y in enumerate(b, start=1):
            row.append(min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = row
    return prev[-1]


def score(texts: list[str], rows: list[dict]) -> dict:
    errors = sum(word_errors(t.strip(), r["said"]) for t, r in zip(texts, rows, strict=True))
    words = sum(len(r["said"].split()) for r in rows)
    exact = sum(t.strip() == r["said"] for t, r in zip(texts, rows, strict=True))
    return {"wer": errors / words, "exact": exact / len(rows), "clips": len(rows)}


def report(s: dict) -> str:
    names = {"seen": "fresh clips, training voices", "held_out": "held-out voices"}
    lines = ["| clips | transcripts by | WER | exact | n |", "|---|---|---:|---:|---:|"]
    for split, name in names.items():
        for arm, label in (("adapter", "speech adapter"), ("text_only", "text model alone")):
            r = s[split][arm]
            lines.append(f"| {name} | {label} | {100 * r['wer']:.1f}% | "
                         f"{100 * r['exact']:.1f}% | {r['clips']} |")  # fmt: skip
    t = s["adapter_training"]
    lines += ["", f"Text model alone writes: \"{s['text_only_transcript']}\"; given the words "
              f"as text it repeats {100 * s['text_model_copies']:.0f}% exactly. Adapter: `herd "
              f"train` {s['settings']['steps']} steps of {s['settings']['batch_size']} clips "
              f"({s['train_clips']} training clips) in {t['seconds'] / 60:.1f} minutes, loss "
              f"{t['first_loss']:.3f} -> {t['final_loss']:.3f}. "
              f"{s['minutes']:.1f} minutes in all."]  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = study_parser(__doc__, "runs/speech_adapter")
    p.add_argument("--seed", type=int, default=0, help="seed of clips, models and order")
    p.add_argument("--train-clips", type=int, default=4000, help="training clips")
    p.add_argument("--test-clips", type=int, default=150, help="fresh clips per split")
    p.add_argument("--vocab", type=int, default=300, help="BPE vocabulary size (at most)")
    p.add_argument("--dim", type=int, default=96, help="text model width")
    p.add_argument("--lm-steps", type=int, default=1500, help="text model steps (full batches)")
    p.add_argument("--lm-lr", type=float, default=5e-3, help="text model peak lr (cosine)")
    p.add_argument("--speech-dim", type=int, default=96, help="Conformer width")
    p.add_argument("--speech-layers", type=int, default=3, help="Conformer blocks")
    p.add_argument("--steps", type=int, default=6000, help="adapter steps (herd train)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per adapter step")
    p.add_argument("--lr", type=float, default=3e-3, help="adapter peak learning rate")
    p.add_argument("--log-every", type=int, default=100, help="herd train's logging interval")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parse_study(p, argv, QUICK)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    heard = [v for v in VARIANTS if v not in HELD_OUT_VARIANTS]
    rows = speak(out, "train", args.train_clips, heard, args.seed)
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = speak(out, "seen", args.test_clips, heard, args.seed + 1)
    held_out = speak(out, "held_out", args.test_clips, HELD_OUT_VARIANTS, args.seed + 2)
    text = train_text_model(args, out)
    copies = copy_accuracy(text, min(100, args.train_clips), args.seed)
    checkpoint, training = train_adapter(args, out, text, out / "train.jsonl")

    model, tok = herd.load(checkpoint).eval(), herd.load_tokenizer(checkpoint)
    guess = transcribe(model, tok, None, [{}])[0].strip()
    summary = {"settings": vars(args), "train_clips": len(rows), "adapter_training": training,
               "text_only_transcript": guess, "text_model_copies": copies}  # fmt: skip
    lines = []
    for split, clips in (("seen", seen), ("held_out", held_out)):
        said = transcribe(model, tok, out, clips)
        summary[split] = {"adapter": score(said, clips),
                          "text_only": score([guess] * len(clips), clips)}  # fmt: skip
        lines += [json.dumps({"split": split, **r, "heard": t.strip()})
                  for r, t in zip(clips, said, strict=True)]  # fmt: skip
    summary["minutes"] = (time.perf_counter() - began) / 60
    (out / "transcripts.jsonl").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = report(summary)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    return summary


if __name__ == "__main__":
    try:
        main()
    except HerdError as e:
        sys.exit(f"error: {e}")
