"""CPU post-training benchmark: `herd sft` against TRL's SFTTrainer (packing on) and `herd dpo`
against TRL's DPOTrainer (its default reference handling), same model and data.

Issue "Post-training I", speed section: SFT tokens/s against TRL's `SFTTrainer` with packing, at
least 1.3x; DPO pairs/s against TRL's `DPOTrainer` with its default reference handling, at least
1.5x; LoRA DPO peak memory at most 1.2x LoRA SFT's. Two stages, SFT then DPO (`--stages`). LoRA
DPO against LoRA SFT peak memory is not measured yet ([lora] landed after this stage was written).

    .venv/bin/python bench/post_train.py                 # ~6 minutes on 2 shared cores
    .venv/bin/python bench/post_train.py --quick         # tiny sizes, a dry run in < 1 minute
    .venv/bin/python bench/post_train.py --threads 2 --out /tmp/post_train.json
    .venv/bin/python bench/post_train.py --stages dpo    # the DPO stage alone

Setup, built in a temporary folder: a byte-level BPE tokenizer (`herd.vocab.bpe.train_bpe`, Llama 3
chat format) trained on generated text; a randomly initialised Llama-shaped herd checkpoint (dim
256, 4 layers, 8 heads, SwiGLU 704; `--vocab 2048` asked of the BPE trainer, about 1,100 tokens
reached on the generated pseudo-words of random syllables) saved with `save_herd_folder`; its
Hugging Face export (`herd.checkpoint.convert.convert(..., dst_format="hf")`, which writes the
tokenizer files and a chat template transformers reads), loaded as `LlamaForCausalLM` (SDPA
attention, float32); and a JSONL file of generated conversations (optional system prompt, 1-4
user/assistant exchanges of 3-60 words each), each short enough to fit one packed row whole, so
neither side drops or truncates anything.

herd: `Trainer(run, run_dir, data=sft_data(run))` with `load_sft_config(None, overrides)`, i.e.
exactly what `herd sft` runs: best-fit-decreasing packing of whole dialogues into rows of
`--seq` positions (padded), attention kept within each dialogue (document mask), loss on the
assistant's tokens only, AdamW (fused, betas 0.9/0.95, weight decay 0.1 on matrices), gradient
clipping at 1.0, warm-up then cosine decay to 10%, the stability monitor at its defaults. Timed
per `Trainer.train_step()` (one optimizer step, including taking the batch its background thread
built during the previous step).

TRL: `SFTTrainer` on the same dialogues (a `datasets.Dataset` of `messages`), `SFTConfig(packing=
True, max_length=--seq, per_device_train_batch_size=--batch, assistant_only_loss=True,
use_cpu=True, bf16=False)` and the same optimizer settings (its default `adamw_torch_fused`; the
transformers Trainer decays every parameter but biases and norm weights, the same set here),
`cosine_with_min_lr` (min_lr_rate 0.1) after the same warm-up, max_grad_norm 1.0. The exported
template has no `{% generation %}` markers and TRL patches only templates it recognises, so the
TRL tokenizer gets `TRAINING_TEMPLATE`: the export's Llama 3 format for plain messages with the
markers around the assistant's content and <|eot_id|>, what herd's mask covers; the benchmark
checks that it gives the same ids and the same assistant mask as herd's chat format on every
dialogue. Timed from one `on_step_end` callback to the next: the whole loop,
including the DataLoader and collator, TRL's per-step metrics (entropy, token accuracy, which read
back to the host) and its logging at its default interval.

What TRL actually does with packing on CPU (read from trl/trainer/sft_trainer.py and
transformers/masking_utils.py): the default strategy "bfd" packs dialogues best-fit decreasing
into sequences of at most max_length tokens WITHOUT padding and turns on padding-free mode; its
collator concatenates the whole batch into one row [1, sum of lengths] with `position_ids` that
restart at each dialogue (and `cu_seq_lens` for FlashAttention). With SDPA (FlashAttention 2/3
do not run on CPU), transformers finds the dialogue boundaries in `position_ids` and builds a
block-diagonal causal mask, so attention is document-masked: no cross-contamination between
packed dialogues, the same semantics as herd's, and the two runs train on the same objective.
The cost differs: TRL's attention runs over one sequence of ~batch x max_length tokens with a
[T, T] mask (quadratic in the whole batch's tokens, most of it masked out), herd's over `batch`
rows of `--seq` positions. That is TRL's default path on this hardware, so it is what is timed;
the ratio should grow with `--batch` for that reason (not measured: at batch 1 both attend
within one row of at most `--seq` positions).

What is counted: dialogue tokens per second, the tokens of the dialogues a step trains on (a
dialogue of n tokens counts n on both sides; padding counts on neither) divided by the step's
seconds. herd pads each row to `--seq` positions and feeds n - 1 positions per dialogue; TRL
feeds all n tokens of each dialogue and no padding; the positions each side computes per second
are printed too. Both pack the same dialogues best-fit decreasing, so their steps hold similar
numbers of tokens; rows differ and so does the order (each shuffles its own way), which is why
the rate is per token, not per step.

DPO stage: `--pairs` generated preference pairs (a prompt of an optional system prompt, 0-2
earlier exchanges and a user turn; two different one-message assistant responses of 3-60 words),
each whose prompt + longer response fits `--seq` tokens, so neither side drops or truncates any.
herd: `Trainer(run, run_dir, data=dpo_data(run, run_dir))` with `load_stage_config(None,
overrides, DPO_DEFAULTS)`, what `herd dpo` runs: beta 0.1, alpha 0.2 (Llama 3), the same optimizer
and schedule as SFT, `data.val_fraction 0` (TRL holds nothing out; herd's default 0.05 would add a
held-out reference pass). Its constructor computes the reference log-probs of every pair once
(no gradient, `--batch` pairs per forward); that pass is timed on its own and reported three ways:
excluded (steady-state pairs/s), charged whole to the measured steps, and spread over one epoch of
`--pairs` pairs (later epochs reuse it: the figure excluding it is the limit). TRL: `DPOTrainer`
on the HF export with `ref_model=None`, no PEFT and `precompute_ref_log_probs=False` (the
defaults): it loads a second copy of the model as the reference and runs it (no gradient) on every
batch; `DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.2], beta=0.1, max_length=
--seq)`, the same optimizer settings, schedule and batch size, float32, use_cpu. Both feed one
forward over [chosen; rejected], right-padded to the batch's longest row, so a step computes the
same positions on both sides. The pairs herd's steps draw (from a copy of its batch source) are
given to TRL in that order with `train_sampling_strategy="sequential"`: step i of either engine
trains on the same pairs, and the benchmark checks, row by row, that TRL's prompt ids, prompt +
chosen and prompt + rejected ids equal herd's. What each scores differs by one token per response:
TRL the whole completion (content and <|eot_id|>), herd the content (Llama 3 masks terminators);
checked too. Counted: pairs per second (the headline) and tokens per second (prompt + chosen plus
prompt + rejected, padding excluded), per `Trainer.train_step()` and per TRL step as in SFT; TRL's
steps include its per-step metrics (entropy, logits, token and reward accuracies, read back to the
host), herd's keep theirs on the device until a log step (none while timed). Not timed: TRL
loading its reference copy in its constructor, herd reading the checkpoint in its.

Timing: after `--warmup` untimed steps per engine, the engines take turns in blocks of `--block`
steps (the first step of each block untimed: it starts on caches the other engine left). The
paired ratio of a round is herd's tokens/s (DPO: pairs/s) over its timed steps divided by TRL's
in the same round; the median and the 10th-90th percentile of the paired ratios are printed,
with each engine's median tokens/s (and pairs/s), the CPU model and the versions. Threads:
`torch.set_num_threads` (`--threads`), shared by both engines in this one process.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import log, quiet  # bench/common.py, beside this script

# fmt: off
SYLLABLES = [
    "ka", "ri", "to", "ma", "ne", "su", "lo", "pe", "vi", "da", "gu", "ze", "ho", "fa", "mi",
    "ru", "sa", "te", "no", "bi", "ya", "ko", "le", "wu", "cha", "shi", "en", "ar", "in", "on",
    "ul", "os", "at", "it", "ex", "str", "pl", "tr", "gr", "br",
]
# fmt: on

BETA, ALPHA = 0.1, 0.2  # herd dpo's defaults (Llama 3 section 4.1.4); TRL loss_weights [1, ALPHA]


def vocabulary(rng: random.Random, n: int = 3000) -> list[str]:
    """`n` pseudo-words of 1-4 syllables, common ones first (`sentence` draws them Zipf-like), so
    that the BPE vocabulary fills up and words take one to several tokens, as in real text."""
    return ["".join(rng.choices(SYLLABLES, k=rng.choice((1, 2, 2, 3, 3, 4)))) for _ in range(n)]


# herd's Llama 3 chat format for messages without tool calls, with TRL's `{% generation %}`
# markers around what herd's SFT mask covers: the assistant's content and its <|eot_id|>.
TRAINING_TEMPLATE = (
    "{{- '<|begin_of_text|>' -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' ~ message.role ~ '<|end_header_id|>\\n\\n' -}}"
    "{%- if message.role == 'assistant' -%}"
    "{%- generation -%}{{- message.content ~ '<|eot_id|>' -}}{%- endgeneration -%}"
    "{%- else -%}{{- message.content ~ '<|eot_id|>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{%- endif -%}"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(
            "Dialogue tokens/s of SFT training steps on CPU: `herd sft` (herd's Trainer) vs TRL's "
            "SFTTrainer with packing, same weights and dialogues, alternating in one process."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--vocab", type=int, default=2048, help="BPE vocabulary size")
    p.add_argument("--dim", type=int, default=256, help="model width")
    p.add_argument("--layers", type=int, default=4, help="number of Transformer blocks")
    p.add_argument("--heads", type=int, default=8, help="query heads")
    p.add_argument("--kv-heads", type=int, default=8, help="key/value heads")
    p.add_argument("--ffn-dim", type=int, default=704, help="SwiGLU hidden width")
    p.add_argument("--dialogues", type=int, default=400, help="generated conversations")
    p.add_argument("--pairs", type=int, default=400, help="generated preference pairs (DPO)")
    p.add_argument("--seq", type=int, default=512, help="packed row length (TRL max_length)")
    p.add_argument("--batch", type=int, default=4, help="packed rows per step")
    p.add_argument("--steps", type=int, default=10, help="timed steps per engine")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per engine first")
    p.add_argument(
        "--block", type=int, default=3, help="steps per engine per turn; the first is untimed"
    )
    p.add_argument("--lr", type=float, default=1e-5, help="peak learning rate (herd sft default)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the weights")
    p.add_argument(
        "--stages", default="sft,dpo", help="comma-separated stages to run: sft, dpo or both"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes for a dry run (< 1 minute)")
    p.add_argument("--out", type=Path, default=None, metavar="OUT", help="write results as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.dim, args.layers, args.heads, args.kv_heads, args.ffn_dim = 64, 2, 4, 4, 192
        args.vocab, args.dialogues, args.seq, args.batch = 512, 80, 256, 2
        args.pairs = 40
        args.steps, args.warmup, args.block = 2, 1, 2
    if args.block < 2 or args.steps < 1 or args.warmup < 0 or args.batch < 1:
        p.error("--block must be >= 2, --steps and --batch >= 1, --warmup >= 0")
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if not args.stages or set(args.stages) - {"sft", "dpo"}:
        p.error("--stages: expected sft, dpo or sft,dpo")
    return args


# --- data and checkpoints -----------------------------------------------------------------------


def sentence(rng: random.Random, words: list[str], lo: int, hi: int) -> str:
    n = len(words)
    words = [words[min(int(rng.paretovariate(1.0)) - 1, n - 1)] for _ in range(rng.randint(lo, hi))]
    return (" ".join(words) + rng.choice(".?!")).capitalize()


def dialogue(rng: random.Random, words: list[str]) -> list[dict]:
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": sentence(rng, words, 4, 12)})
    for _ in range(rng.choice((1, 1, 2, 2, 3, 4))):
        messages.append({"role": "user", "content": sentence(rng, words, 3, 30)})
        messages.append({"role": "assistant", "content": sentence(rng, words, 3, 60)})
    return messages


def build_setup(args: argparse.Namespace, root: Path) -> dict:
    """Tokenizer, herd checkpoint, its HF export and the conversations (each fitting one row)."""
    import herd
    from herd.checkpoint.convert import convert
    from herd.checkpoint.io import save_herd_folder
    from herd.tokenizer.chat import encode_dialog
    from herd.vocab.bpe import train_bpe

    rng = random.Random(args.seed)
    words = vocabulary(rng)
    corpus = root / "corpus.txt"
    corpus.write_text(
        "\n".join(m["content"] for _ in range(2000) for m in dialogue(rng, words)), encoding="utf-8"
    )
    tok_dir = train_bpe([corpus], args.vocab, root / "tok", show_progress=False)
    tok = herd.load_tokenizer(tok_dir)
    config = herd.ModelConfig(
        dim=args.dim,
        n_layers=args.layers,
        n_heads=args.heads,
        n_kv_heads=args.kv_heads,
        vocab_size=tok.vocab_size,
        ffn_dim=args.ffn_dim,
        max_seq_len=args.seq,
    )
    model = herd.build_model(config, seed=args.seed)
    base = save_herd_folder(config, model.state_dict(), root / "base", tokenizer=tok.files())
    hf_dir = convert(base, root / "hf", dst_format="hf")

    # A dialogue of n tokens fills n - 1 herd positions and n TRL positions: n <= seq keeps every
    # one whole on both sides.
    rows, lengths, too_long = [], [], 0
    while len(rows) < args.dialogues:
        messages = dialogue(rng, words)
        n = len(encode_dialog(tok, messages, add_generation_prompt=False).ids)
        if n > args.seq:
            too_long += 1
            continue
        rows.append({"messages": messages})
        lengths.append(n)
    data = root / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    log(
        f"setup: vocabulary {tok.vocab_size}, {config.num_params() / 1e6:.2f} M parameters, "
        f"{len(rows)} dialogues of {min(lengths)}-{max(lengths)} tokens (median "
        f"{statistics.median(lengths):.0f}, {sum(lengths)} in all; {too_long} longer than "
        f"{args.seq} regenerated)"
    )
    return {
        "tokenizer": tok,
        "config": config,
        "base": base,
        "hf": hf_dir,
        "data": data,
        "rows": rows,
        "lengths": lengths,
        "words": words,
    }


# --- engines ----------------------------------------------------------------------------------


class HerdSFT:
    """herd's Trainer as `herd sft` builds it; `step()` runs and times one optimizer step."""

    def __init__(self, args: argparse.Namespace, setup: dict, run_dir: Path, total_steps: int):
        from herd.posttrain.sft import load_sft_config, sft_data
        from herd.train.trainer import Trainer

        overrides = {
            "model.checkpoint": str(setup["base"]),
            "data.path": str(setup["data"]),
            "data.seq_len": str(args.seq),
            "data.batch_size": str(args.batch),
            "data.seed": str(args.seed),
            "train.steps": str(total_steps),
            "train.out": str(run_dir),
            "train.device": "cpu",
            "train.dtype": "float32",
            "train.log_every": str(10**9),
            "train.eval_every": str(10**9),
            "train.checkpoint_every": str(10**9),
            "optim.lr": str(args.lr),
        }
        run = load_sft_config(None, overrides)
        self.data = sft_data(run)
        self.trainer = Trainer(run, run_dir, data=self.data)
        self.pad_id = self.data.source.pad_id
        self.n_rows = self.data.source.n_rows
        self.seconds: list[float] = []
        self.tokens: list[int] = []
        self.positions: list[int] = []
        take = self.trainer.loader.next

        def counting_next():  # the step's dialogue tokens, read off the batch it trains on
            step = take()
            self._last = [self._dialogue_tokens(mb) for mb in step.micro]
            return step

        self.trainer.loader.next = counting_next

    def _dialogue_tokens(self, batch) -> tuple[int, int]:
        """(dialogue tokens, positions) of a TrainBatch: n - 1 input positions per dialogue plus
        one for its last token, which is only a target; padding is not counted."""
        real = batch.inputs != self.pad_id
        docs = batch.doc_ids
        starts = real & torch.cat([torch.ones_like(docs[:, :1]), docs[:, 1:] != docs[:, :-1]], 1)
        return int(real.sum() + starts.sum()), batch.inputs.numel()

    def step(self, timed: bool) -> None:
        start = time.perf_counter()
        self.trainer.train_step()
        seconds = time.perf_counter() - start
        if timed:
            self.seconds.append(seconds)
            self.tokens.append(sum(t for t, _ in self._last))
            self.positions.append(sum(p for _, p in self._last))


def trl_sft(args: argparse.Namespace, setup: dict, out: Path, total_steps: int, callback):
    """TRL's SFTTrainer on the HF export of the same checkpoint and the same dialogues."""
    import datasets
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    model = LlamaForCausalLM.from_pretrained(
        setup["hf"], dtype=torch.float32, attn_implementation="sdpa"
    )
    tokenizer = AutoTokenizer.from_pretrained(setup["hf"])
    # TRL patches only the templates it knows; this is the export's Llama 3 format for plain
    # messages with the assistant's content and <|eot_id|> marked (check_same_data verifies it).
    tokenizer.chat_template = TRAINING_TEMPLATE
    config = SFTConfig(
        output_dir=str(out),
        packing=True,
        max_length=args.seq,
        per_device_train_batch_size=args.batch,
        assistant_only_loss=True,
        use_cpu=True,
        bf16=False,
        fp16=False,
        learning_rate=args.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        warmup_steps=10,  # herd sft's default
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        max_steps=total_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=args.seed,
    )
    dataset = datasets.Dataset.from_list(setup["rows"])
    return SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[callback],
    )


def check_same_data(trainer, setup: dict) -> dict:
    """Tokenize every dialogue with the template TRL trains with; compare ids and assistant masks
    with herd's chat format (herd's mask covers the content and <|eot_id|>, as TRL's must)."""
    from herd.tokenizer.chat import encode_dialog

    hf_tok = trainer.processing_class
    template = trainer.chat_template or hf_tok.chat_template
    same_ids = same_mask = 0
    for row in setup["rows"]:
        ours = encode_dialog(setup["tokenizer"], row["messages"], add_generation_prompt=False)
        theirs = hf_tok.apply_chat_template(
            row["messages"],
            chat_template=template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        same_ids += list(theirs["input_ids"]) == list(ours.ids)
        same_mask += list(theirs["assistant_masks"]) == [int(m) for m in ours.mask]
    n = len(setup["rows"])
    packed = len(trainer.train_dataset)
    log(
        f"data: ids equal on {same_ids}/{n} dialogues, assistant masks on {same_mask}/{n}; "
        f"TRL packed {packed} sequences (template: "
        f"{'TRL training template' if trainer.chat_template else 'the export'})"
    )
    return {"dialogues": n, "same_ids": same_ids, "same_mask": same_mask, "trl_packed": packed}


# --- DPO: preference pairs and engines ----------------------------------------------------------


def preference_pair(rng: random.Random, words: list[str]) -> dict:
    """A prompt (optional system prompt, 0-2 earlier exchanges, a user turn) and two different
    one-message assistant responses."""
    earlier = dialogue(rng, words)
    if earlier[0]["role"] == "system":
        system, earlier = earlier[:1], earlier[1:]
    else:
        system = []
    prompt = system + earlier[: 2 * rng.choice((0, 0, 1, 2))]
    prompt.append({"role": "user", "content": sentence(rng, words, 3, 30)})
    chosen, rejected = (sentence(rng, words, 3, 60) for _ in range(2))
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def build_pairs(args: argparse.Namespace, setup: dict, root: Path) -> dict:
    """A JSONL file of `--pairs` preference pairs whose prompt + longer response fits `--seq`
    tokens (nothing dropped or truncated on either side)."""
    from herd.tokenizer.chat import encode_dialog

    rng = random.Random(args.seed + 1)
    tok = setup["tokenizer"]
    rows, lengths, too_long = [], [], 0
    while len(rows) < args.pairs:
        row = preference_pair(rng, setup["words"])
        if row["chosen"] == row["rejected"]:
            continue
        n = [
            len(encode_dialog(tok, row["prompt"] + row[side], add_generation_prompt=False).ids)
            for side in ("chosen", "rejected")
        ]
        if max(n) > args.seq:
            too_long += 1
            continue
        rows.append(row)
        lengths += n
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    log(
        f"setup: {len(rows)} preference pairs, prompt + response {min(lengths)}-{max(lengths)} "
        f"tokens (median {statistics.median(lengths):.0f}; {too_long} longer than {args.seq} "
        "regenerated)"
    )
    return {"path": path, "rows": rows}


class HerdDPO:
    """herd's Trainer as `herd dpo` builds it; `step()` runs and times one optimizer step. The
    reference log-probs of every pair are computed in the constructor (timed: `reference_s`)."""

    def __init__(
        self, args: argparse.Namespace, setup: dict, pairs: dict, run_dir: Path, total_steps: int
    ):
        from herd.posttrain.dpo_run import DPO_DEFAULTS, dpo_data
        from herd.posttrain.sft import load_stage_config
        from herd.train.trainer import Trainer

        overrides = {
            "model.checkpoint": str(setup["base"]),
            "data.path": str(pairs["path"]),
            "data.seq_len": str(args.seq),
            "data.batch_size": str(args.batch),
            "data.seed": str(args.seed),
            "data.val_fraction": "0",  # TRL trains on every pair; no held-out reference either
            "dpo.beta": str(BETA),
            "dpo.alpha": str(ALPHA),
            "train.steps": str(total_steps),
            "train.out": str(run_dir),
            "train.device": "cpu",
            "train.dtype": "float32",
            "train.log_every": str(10**9),
            "train.eval_every": str(10**9),
            "train.checkpoint_every": str(10**9),
            "optim.lr": str(args.lr),
        }
        run = load_stage_config(None, overrides, DPO_DEFAULTS)
        self.data = dpo_data(run, run_dir)
        self.examples = self.data.source.examples
        objective, prepare = self.data.objective, self.data.objective.prepare
        self.reference_s = 0.0

        def timed_prepare(*a, **k):  # the reference forward over every pair, once
            start = time.perf_counter()
            prepare(*a, **k)
            self.reference_s = time.perf_counter() - start

        objective.prepare = timed_prepare
        self.trainer = Trainer(run, run_dir, data=self.data)
        self.seconds: list[float] = []
        self.tokens: list[int] = []
        self.pairs: list[int] = []
        self.positions: list[int] = []
        take = self.trainer.loader.next

        def counting_next():  # the step's pairs and their tokens, read off its batch
            step = take()
            self._last = [self._pair_tokens(mb) for mb in step.micro]
            return step

        self.trainer.loader.next = counting_next

    def _pair_tokens(self, batch) -> tuple[int, int, int]:
        """(tokens, pairs, positions) of a PairBatch: prompt + chosen and prompt + rejected of
        each pair (no padding); positions are what the one forward computes, [2B, T]."""
        tokens = 0
        for i in batch.index.tolist():
            e = self.examples[i]
            tokens += 2 * len(e.prompt_ids) + len(e.chosen_ids) + len(e.rejected_ids)
        width = max(batch.chosen_ids.shape[1], batch.rejected_ids.shape[1])
        return tokens, batch.index.numel(), 2 * batch.index.numel() * width

    def step(self, timed: bool) -> None:
        start = time.perf_counter()
        self.trainer.train_step()
        seconds = time.perf_counter() - start
        if timed:
            self.seconds.append(seconds)
            self.tokens.append(sum(t for t, _, _ in self._last))
            self.pairs.append(sum(n for _, n, _ in self._last))
            self.positions.append(sum(p for _, _, p in self._last))


def trl_dpo(args: argparse.Namespace, setup: dict, rows: list, out: Path, total: int, callback):
    """TRL's DPOTrainer on the HF export, its default reference handling: no `ref_model`, no
    PEFT, `precompute_ref_log_probs` False, so it loads a second copy of the model as the
    reference and runs it on every batch. `rows` come in herd's order, read sequentially."""
    import datasets
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    model = LlamaForCausalLM.from_pretrained(
        setup["hf"], dtype=torch.float32, attn_implementation="sdpa"
    )
    tokenizer = AutoTokenizer.from_pretrained(setup["hf"])
    config = DPOConfig(
        output_dir=str(out),
        max_length=args.seq,
        per_device_train_batch_size=args.batch,
        beta=BETA,
        loss_type=["sigmoid", "sft"],  # Llama 3: DPO + alpha x NLL of the chosen response
        loss_weights=[1.0, ALPHA],
        use_cpu=True,
        bf16=False,
        fp16=False,
        learning_rate=args.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        warmup_steps=10,  # herd dpo's default
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        max_steps=total,
        train_sampling_strategy="sequential",  # the rows are already in herd's order
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=args.seed,
    )
    return DPOTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[callback],
    )


def check_same_pairs(trainer, herd_engine: HerdDPO, order: list[int]) -> dict:
    """TRL's tokenized rows against herd's pairs, row by row: prompt ids, prompt + chosen and
    prompt + rejected ids, and the scored tokens (TRL scores the whole completion, content and
    <|eot_id|>; herd masks terminators out, as Llama 3 does)."""
    from herd.posttrain.chat_data import termination_ids

    stops = set(termination_ids(herd_engine.data.tokenizer))
    ds = trainer.train_dataset
    n = len(ds)
    same = {"prompt": 0, "chosen": 0, "rejected": 0, "scored": 0}
    columns = zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"], strict=True)
    for k, (p, c, r) in enumerate(columns):
        e = herd_engine.examples[order[k]]
        same["prompt"] += list(p) == e.prompt_ids
        same["chosen"] += list(p) + list(c) == e.prompt_ids + e.chosen_ids
        same["rejected"] += list(p) + list(r) == e.prompt_ids + e.rejected_ids
        same["scored"] += [int(t not in stops) for t in c] == e.chosen_mask and [
            int(t not in stops) for t in r
        ] == e.rejected_mask
    log(
        f"data: of {n} TRL rows, prompt ids equal on {same['prompt']}, prompt + chosen on "
        f"{same['chosen']}, prompt + rejected on {same['rejected']}; herd's scored tokens are "
        f"TRL's less the terminators on {same['scored']}"
    )
    return {"rows": n, **{f"same_{k}": v for k, v in same.items()}}


class Alternator:
    """A TRL callback: times TRL's steps (on_step_end to on_step_end, whole loop) and, after every
    TRL block, runs herd's block, so both engines alternate in one training process. A round's
    rate is per token (SFT) or, when the steps count pairs (DPO), per pair."""

    def __init__(self, args: argparse.Namespace, herd_engine):
        from transformers import TrainerCallback

        self.args, self.herd = args, herd_engine
        self.seconds: list[float] = []
        self.tokens: list[int] = []
        self.pairs: list[int] = []
        self.rounds: list[dict] = []
        self.done = 0
        self._pending: tuple[int, int | None] | None = None
        self._mark = time.perf_counter()
        outer = self

        class Callback(TrainerCallback):
            def on_train_begin(self, *a, **k):
                outer._mark = time.perf_counter()

            def on_step_end(self, args, state, control, **k):
                outer.on_step_end(control)

        self.callback = Callback()

    def record_batch(self, tokens: int, pairs: int | None = None) -> None:
        self._pending = (tokens, pairs)

    def on_step_end(self, control) -> None:
        seconds = time.perf_counter() - self._mark
        self.done += 1
        a = self.args
        k = self.done - a.warmup
        if k > 0:
            position = (k - 1) % a.block
            if position > 0:  # the first step of a block is untimed
                self.seconds.append(seconds)
                self.tokens.append(self._pending[0])
                if self._pending[1] is not None:
                    self.pairs.append(self._pending[1])
            if position == a.block - 1:
                self._herd_block()
                if len(self.herd.seconds) >= a.steps and len(self.seconds) >= a.steps:
                    control.should_training_stop = True
        self._mark = time.perf_counter()

    def _herd_block(self) -> None:
        a, h = self.args, self.herd
        n = a.block - 1
        trl_s, trl_t = self.seconds[-n:], self.tokens[-n:]
        before = len(h.seconds)
        for i in range(a.block):
            h.step(timed=i > 0)
        herd_s, herd_t = h.seconds[before:], h.tokens[before:]
        herd_rate, trl_rate = sum(herd_t) / sum(herd_s), sum(trl_t) / sum(trl_s)
        ms = (
            f"({1e3 * statistics.median(herd_s):.0f} ms/step)",
            f"({1e3 * statistics.median(trl_s):.0f} ms/step)",
        )
        if not self.pairs:
            self.rounds.append(
                {"herd_tok_s": herd_rate, "trl_tok_s": trl_rate, "ratio": herd_rate / trl_rate}
            )
            log(
                f"round {len(self.rounds)}: herd {herd_rate:,.0f} tok/s {ms[0]}, TRL "
                f"{trl_rate:,.0f} tok/s {ms[1]}, ratio {herd_rate / trl_rate:.2f}x"
            )
            return
        herd_pairs = sum(h.pairs[before:]) / sum(herd_s)
        trl_pairs = sum(self.pairs[-n:]) / sum(trl_s)
        self.rounds.append(
            {
                "herd_pairs_s": herd_pairs,
                "trl_pairs_s": trl_pairs,
                "herd_tok_s": herd_rate,
                "trl_tok_s": trl_rate,
                "ratio": herd_pairs / trl_pairs,
            }
        )
        log(
            f"round {len(self.rounds)}: herd {herd_pairs:.1f} pairs/s {ms[0]}, TRL "
            f"{trl_pairs:.1f} pairs/s {ms[1]}, ratio {herd_pairs / trl_pairs:.2f}x"
        )


# --- benchmark --------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sft_stage(args: argparse.Namespace, setup: dict, root: Path) -> dict:
    from transformers import PrinterCallback

    rounds = -(-args.steps // (args.block - 1))
    total = args.warmup + rounds * args.block + 2  # steps each engine's schedule spans
    herd_engine = HerdSFT(args, setup, root / "herd-run", total)
    for _ in range(args.warmup):
        herd_engine.step(timed=False)
    alternator = Alternator(args, herd_engine)
    trainer = trl_sft(args, setup, root / "trl-run", total, alternator.callback)
    same = check_same_data(trainer, setup)
    take = trainer.training_step

    shapes: list[dict] = []

    def counting_step(model, inputs, *rest, **kw):  # padding-free: [1, sum of lengths]
        alternator.record_batch(int(inputs["input_ids"].numel()))
        if len(shapes) < 3:  # what the model is fed: one row, positions restarting per dialogue
            positions = inputs.get("position_ids")
            shapes.append(
                {
                    "input_ids": list(inputs["input_ids"].shape),
                    "attention_mask": "attention_mask" in inputs,
                    "dialogues": None if positions is None else int((positions == 0).sum()),
                }
            )
        return take(model, inputs, *rest, **kw)

    trainer.training_step = counting_step
    trainer.remove_callback(PrinterCallback)  # its end-of-training dict on stdout
    trainer.train()
    log(f"TRL's first batches: {shapes}")

    h, t = herd_engine, alternator
    herd_rates = [n / s for n, s in zip(h.tokens, h.seconds, strict=True)]
    trl_rates = [n / s for n, s in zip(t.tokens, t.seconds, strict=True)]
    paired = sorted(r["ratio"] for r in t.rounds)
    spread = (
        statistics.quantiles(paired, n=10, method="inclusive") if len(paired) > 1 else paired * 9
    )
    return {
        "data": same,
        "herd": {
            "tok_s_median": statistics.median(herd_rates),
            "tok_s_mean": sum(h.tokens) / sum(h.seconds),
            "positions_s": sum(h.positions) / sum(h.seconds),
            "step_ms_median": 1e3 * statistics.median(h.seconds),
            "tokens_per_step_mean": statistics.mean(h.tokens),
            "positions_per_step": h.positions[0],
            "packed_rows": h.n_rows,
            "step_ms": [1e3 * s for s in h.seconds],
        },
        "trl": {
            "tok_s_median": statistics.median(trl_rates),
            "tok_s_mean": sum(t.tokens) / sum(t.seconds),
            "positions_s": sum(t.tokens) / sum(t.seconds),  # padding-free: positions = tokens
            "step_ms_median": 1e3 * statistics.median(t.seconds),
            "tokens_per_step_mean": statistics.mean(t.tokens),
            "packed_rows": same["trl_packed"],
            "first_batches": shapes,
            "step_ms": [1e3 * s for s in t.seconds],
        },
        "rounds": t.rounds,
        "ratio_median": statistics.median(herd_rates) / statistics.median(trl_rates),
        "ratio_paired": {"median": statistics.median(paired), "p10": spread[0], "p90": spread[-1]},
    }


def dpo_stage(args: argparse.Namespace, setup: dict, root: Path) -> dict:
    from transformers import PrinterCallback

    pairs = build_pairs(args, setup, root)
    rounds = -(-args.steps // (args.block - 1))
    total = args.warmup + rounds * args.block + 2  # steps each engine's schedule spans
    herd_engine = HerdDPO(args, setup, pairs, root / "herd-dpo", total)
    n_pairs = len(herd_engine.examples)
    log(
        f"herd: reference log-probs of {n_pairs} pairs in {herd_engine.reference_s:.1f} s "
        "(Trainer's constructor, once)"
    )
    # The pairs herd's steps will draw, in order, from a copy of its batch source: TRL reads the
    # same rows sequentially, so step i of either engine trains on the same pairs.
    probe = type(herd_engine.data.source)(
        herd_engine.examples, args.batch, args.seed, herd_engine.data.source.pad_id
    )
    order = [i for _ in range(total) for i in probe.next_micro_batch().index.tolist()]
    if n_pairs != len(pairs["rows"]):  # herd keeps every pair, in file order
        raise SystemExit(f"post_train: herd kept {n_pairs} of {len(pairs['rows'])} pairs")
    for _ in range(args.warmup):
        herd_engine.step(timed=False)
    alternator = Alternator(args, herd_engine)
    rows = [pairs["rows"][i] for i in order]
    trainer = trl_dpo(args, setup, rows, root / "trl-dpo", total, alternator.callback)
    same = check_same_pairs(trainer, herd_engine, order)
    reference = "separate model" if trainer.ref_model is not None else "none"
    take = trainer.training_step
    widths: list[int] = []

    def counting_step(model, inputs, *rest, **kw):  # [chosen; rejected] rows, right-padded
        ids = inputs["input_ids"]
        alternator.record_batch(int(inputs["attention_mask"].sum()), ids.shape[0] // 2)
        widths.append(ids.numel())
        return take(model, inputs, *rest, **kw)

    trainer.training_step = counting_step
    trainer.remove_callback(PrinterCallback)
    trainer.train()

    h, t = herd_engine, alternator
    w, b = args.warmup, args.block  # the steps Alternator timed: not warm-up, not a block's first
    timed_widths = [x for i, x in enumerate(widths) if i >= w and (i - w) % b > 0]
    herd_pairs = [n / s for n, s in zip(h.pairs, h.seconds, strict=True)]
    trl_pairs = [n / s for n, s in zip(t.pairs, t.seconds, strict=True)]
    herd_tok = [n / s for n, s in zip(h.tokens, h.seconds, strict=True)]
    trl_tok = [n / s for n, s in zip(t.tokens, t.seconds, strict=True)]
    paired = sorted(r["ratio"] for r in t.rounds)
    spread = (
        statistics.quantiles(paired, n=10, method="inclusive") if len(paired) > 1 else paired * 9
    )
    herd_rate, trl_rate = statistics.median(herd_pairs), statistics.median(trl_pairs)
    # herd's cost including the reference pass: over the measured steps (all of it charged to
    # them), and over one epoch of every pair (the pass is once per run, so also per epoch 1)
    measured = sum(h.pairs) / (sum(h.seconds) + h.reference_s)
    epoch = n_pairs / (n_pairs / herd_rate + h.reference_s)
    return {
        "data": same,
        "pairs": n_pairs,
        "trl_reference": reference,
        "herd": {
            "pairs_s_median": herd_rate,
            "pairs_s_mean": sum(h.pairs) / sum(h.seconds),
            "tok_s_median": statistics.median(herd_tok),
            "step_ms_median": 1e3 * statistics.median(h.seconds),
            "tokens_per_step_mean": statistics.mean(h.tokens),
            "positions_per_step_mean": statistics.mean(h.positions),
            "reference_s": h.reference_s,
            "reference_pairs_s": n_pairs / h.reference_s,
            "pairs_s_with_reference_measured": measured,
            "pairs_s_with_reference_epoch": epoch,
            "step_ms": [1e3 * s for s in h.seconds],
        },
        "trl": {
            "pairs_s_median": trl_rate,
            "pairs_s_mean": sum(t.pairs) / sum(t.seconds),
            "tok_s_median": statistics.median(trl_tok),
            "step_ms_median": 1e3 * statistics.median(t.seconds),
            "tokens_per_step_mean": statistics.mean(t.tokens),
            "positions_per_step_mean": statistics.mean(timed_widths),
            "step_ms": [1e3 * s for s in t.seconds],
        },
        "rounds": t.rounds,
        "ratio_median": herd_rate / trl_rate,
        "ratio_paired": {"median": statistics.median(paired), "p10": spread[0], "p90": spread[-1]},
        "ratio_with_reference_measured": measured / trl_rate,
        "ratio_with_reference_epoch": epoch / trl_rate,
        "lora_peak_memory": None,  # not measured yet
    }


def print_sft(args: argparse.Namespace, setup: dict, sft: dict) -> None:
    h, t = sft["herd"], sft["trl"]
    p = sft["ratio_paired"]
    print()
    print(
        f"SFT, float32, {args.layers} layers, dim {args.dim}, vocab {setup['config'].vocab_size}, "
        f"{args.batch} packed rows x {args.seq} per step, {len(sft['rounds'])} rounds of "
        f"{args.block - 1} timed steps per engine, {args.threads} threads"
    )
    print(f"{'':<6}{'tok/s median':>14}{'tok/s mean':>12}{'positions/s':>13}{'ms/step':>9}"
          f"{'tokens/step':>13}{'packed rows':>13}")  # fmt: skip
    for name, r in (("herd", h), ("TRL", t)):
        print(
            f"{name:<6}{r['tok_s_median']:>14,.0f}{r['tok_s_mean']:>12,.0f}"
            f"{r['positions_s']:>13,.0f}{r['step_ms_median']:>9.0f}"
            f"{r['tokens_per_step_mean']:>13,.0f}{r['packed_rows']:>13}"
        )
    print(
        f"ratio herd/TRL (dialogue tokens/s): {sft['ratio_median']:.2f}x of the medians; paired "
        f"per round {p['median']:.2f}x (10th-90th percentile {p['p10']:.2f}-{p['p90']:.2f}x); "
        "target >= 1.3x"
    )
    print(
        "tok/s = dialogue tokens of the step's batch (padding excluded, n per dialogue on both "
        "sides) / step seconds; positions/s = positions computed (herd: rows x seq incl. "
        "padding; TRL: padding-free, one row of all tokens)"
    )
    d = sft["data"]
    print(
        f"same data: ids {d['same_ids']}/{d['dialogues']}, assistant masks "
        f"{d['same_mask']}/{d['dialogues']} dialogues agree"
    )


def print_dpo(args: argparse.Namespace, setup: dict, dpo: dict) -> None:
    h, t = dpo["herd"], dpo["trl"]
    p = dpo["ratio_paired"]
    n = dpo["pairs"]
    print()
    print(
        f"DPO, float32, {args.layers} layers, dim {args.dim}, vocab {setup['config'].vocab_size}, "
        f"{args.batch} pairs per step (max length {args.seq}), beta {BETA}, alpha {ALPHA}, "
        f"{len(dpo['rounds'])} rounds of {args.block - 1} timed steps per engine, "
        f"{args.threads} threads"
    )
    print(f"{'':<6}{'pairs/s median':>16}{'pairs/s mean':>14}{'tok/s median':>14}{'ms/step':>9}"
          f"{'tokens/step':>13}{'positions/step':>16}")  # fmt: skip
    for name, r in (("herd", h), ("TRL", t)):
        print(
            f"{name:<6}{r['pairs_s_median']:>16.2f}{r['pairs_s_mean']:>14.2f}"
            f"{r['tok_s_median']:>14,.0f}{r['step_ms_median']:>9.0f}"
            f"{r['tokens_per_step_mean']:>13,.0f}{r['positions_per_step_mean']:>16,.0f}"
        )
    print(
        f"ratio herd/TRL (pairs/s, reference pass excluded): {dpo['ratio_median']:.2f}x of the "
        f"medians; paired per round {p['median']:.2f}x (10th-90th percentile "
        f"{p['p10']:.2f}-{p['p90']:.2f}x); target >= 1.5x"
    )
    print(
        f"herd's reference pass: {h['reference_s']:.1f} s for all {n} pairs "
        f"({h['reference_pairs_s']:.1f} pairs/s, once per run, in Trainer's constructor); "
        f"including it: {h['pairs_s_with_reference_measured']:.2f} pairs/s over the "
        f"{len(h['step_ms'])} measured steps ({dpo['ratio_with_reference_measured']:.2f}x TRL), "
        f"{h['pairs_s_with_reference_epoch']:.2f} pairs/s over one epoch of {n} pairs "
        f"({dpo['ratio_with_reference_epoch']:.2f}x TRL; later epochs reuse it)"
    )
    print(
        f"TRL: DPOTrainer's default reference (ref_model None, no PEFT, precompute_ref_log_probs "
        f"False): {dpo['trl_reference']} built by the trainer, run on every batch; both sides: "
        "one forward over [chosen; rejected] right-padded to one length, rows in the same order"
    )
    d = dpo["data"]
    print(
        f"same data: of {d['rows']} rows, prompt ids {d['same_prompt']}, prompt + chosen "
        f"{d['same_chosen']}, prompt + rejected {d['same_rejected']} agree; scored tokens: "
        f"herd's = TRL's less <|eot_id|> on {d['same_scored']}"
    )
    print("LoRA DPO vs LoRA SFT peak memory (target <= 1.2x): not measured yet")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import transformers
    import trl
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    results: dict = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "python": sys.version.split()[0],
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": args.threads,
        "stages": {},
    }
    with tempfile.TemporaryDirectory(prefix="herd-post-train-bench-") as tmp:
        root = Path(tmp)
        setup = build_setup(args, root)
        if "sft" in args.stages:
            results["stages"]["sft"] = sft_stage(args, setup, root)
        if "dpo" in args.stages:
            results["stages"]["dpo"] = dpo_stage(args, setup, root)

    if "sft" in results["stages"]:
        print_sft(args, setup, results["stages"]["sft"])
    if "dpo" in results["stages"]:
        print_dpo(args, setup, results["stages"]["dpo"])
    print(
        f"cpu: {results['cpu']} ({results['cpu_capability']}); torch {torch.__version__}, "
        f"transformers {transformers.__version__}, trl {trl.__version__}"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
