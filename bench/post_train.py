"""CPU post-training benchmark: `herd sft` against TRL's SFTTrainer (packing on) and `herd dpo`
against TRL's DPOTrainer (its default reference handling), same model and data; and the peak
memory of herd's LoRA DPO against herd's LoRA SFT.

Issue "Post-training I", speed section: SFT tokens/s against TRL's `SFTTrainer` with packing, at
least 1.3x; DPO pairs/s against TRL's `DPOTrainer` with its default reference handling, at least
1.5x; LoRA DPO peak memory at most 1.2x LoRA SFT's. Three stages, SFT, DPO, then memory
(`--stages`).

    .venv/bin/python bench/post_train.py                 # ~7 minutes on 2 shared cores
    .venv/bin/python bench/post_train.py --quick         # tiny sizes, a dry run in < 1 minute
    .venv/bin/python bench/post_train.py --threads 2 --out /tmp/post_train.json
    .venv/bin/python bench/post_train.py --stages dpo    # the DPO stage alone
    .venv/bin/python bench/post_train.py --stages memory # LoRA DPO vs LoRA SFT peak memory alone

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

Memory stage (herd only): LoRA SFT and LoRA DPO on one model larger than the speed stages' (the
`--memory-*` sizes, default 8 layers, dim 512, SwiGLU 1408, ~28 M parameters, 102 MiB of float32
weights; the same tokenizer), the same adapters (`lora.r` `--lora-r`, `lora.alpha` 32,
`lora.target_modules` `--lora-targets`, default all-linear), float32, `--memory-steps` steps
each, through what `herd sft` and `herd dpo` run: `Trainer(run, run_dir, data=sft_data(run))`
and `Trainer(run, run_dir, data=dpo_data(run, run_dir))` with the `lora.*` overrides and
`data.val_fraction 0`. Micro-batches of the same positions: SFT `--memory-batch` B packed rows of
`--memory-seq` T positions, one forward over [B, T]; DPO B/2 pairs whose prompt + longer response
has 0.9 T to T tokens (generated: short earlier exchanges added to the prompt), one forward over
[chosen; rejected] = [B, width <= T]. DPO has no second copy of the weights: its reference
log-probs are computed once, in the Trainer's constructor, by the policy itself with its adapters
at zero (B = 0), and read from a table at every step; that reference pass counts in its peak.

Each run is a fresh process (this script with `--memory-child sft|dpo SPEC`, which imports torch
and herd only), so neither run's memory, nor this process's transformers and TRL, is in the
other's figures. On CPU, per process: peak RSS, the RSS high-water mark of the whole process
(VmHWM in /proc/self/status; ru_maxrss cannot serve: a child reports its parent's RSS at the fork
as its ru_maxrss); RSS at load, once the Trainer has loaded the checkpoint and added the
adapters (SFT: the constructor's end, where nothing after loading allocates much, the optimizer's
state coming at the first step; DPO: the start of its reference pass, which the constructor runs
right after loading); the increase, the high-water mark from that point (reset there through
/proc/self/clear_refs) less RSS at load: what training adds to the loaded model, without the
~300 MiB of Python, torch and herd nor the weights, so the strictest ratio; and weights+training,
the same high-water mark less RSS before the Trainer (data loaded, no model). On CUDA
(`--memory-device cuda`) also `torch.cuda.max_memory_allocated` (reset at the load, so weights
and training) and its increase over `memory_allocated` at the load. Printed: the ratio LoRA DPO
/ LoRA SFT of each measure against the target (<= 1.2x) and, for context, what a second full
reference copy (TRL's DPOTrainer without PEFT: `ref_model=None` loads one) would add, its
parameter bytes.
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
            "Post-training on CPU: SFT dialogue tokens/s, `herd sft` (herd's Trainer) vs TRL's "
            "SFTTrainer with packing; DPO pairs/s, `herd dpo` vs TRL's DPOTrainer (same weights "
            "and data, alternating in one process); and the peak memory of herd's LoRA DPO vs "
            "herd's LoRA SFT, each in a fresh process."
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
        "--stages",
        default="sft,dpo,memory",
        help="comma-separated stages to run: sft (speed vs TRL), dpo (speed vs TRL), memory "
        "(LoRA DPO vs LoRA SFT peak memory, herd only)",
    )
    m = p.add_argument_group(
        "memory stage",
        "herd LoRA SFT and herd LoRA DPO on one larger model (the same tokenizer), each in a "
        "fresh process; DPO takes half as many pairs per step as SFT takes packed rows. "
        "--vocab, --lr, --threads and --seed apply here too",
    )
    m.add_argument("--memory-dim", type=int, default=512, help="model width")
    m.add_argument("--memory-layers", type=int, default=8, help="number of Transformer blocks")
    m.add_argument("--memory-heads", type=int, default=8, help="query and key/value heads")
    m.add_argument("--memory-ffn-dim", type=int, default=1408, help="SwiGLU hidden width")
    m.add_argument(
        "--memory-seq", type=int, default=256, help="SFT packed row length, DPO max length"
    )
    m.add_argument(
        "--memory-batch",
        type=int,
        default=4,
        help="SFT packed rows per step; DPO takes half as many pairs (chosen + rejected rows)",
    )
    m.add_argument("--memory-steps", type=int, default=4, help="optimizer steps per run")
    m.add_argument("--lora-r", type=int, default=16, help="LoRA rank (lora.r)")
    m.add_argument(
        "--lora-targets",
        default="all-linear",
        help="LoRA target projections (lora.target_modules), e.g. all-linear or q_proj,v_proj",
    )
    m.add_argument(
        "--memory-device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="where both runs train: cpu (peak RSS) or cuda (torch.cuda peak allocated, and RSS)",
    )
    m.add_argument(
        "--memory-child",
        nargs=2,
        default=None,
        metavar=("KIND", "SPEC"),
        help="internal: run one memory-stage run (KIND sft or dpo, settings from the JSON file "
        "SPEC) in this process and write its figures where SPEC says; the memory stage starts "
        "each run this way",
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes for a dry run (< 1 minute, all stages)"
    )
    p.add_argument("--out", type=Path, default=None, metavar="OUT", help="write results as JSON")
    args = p.parse_args(argv)
    if args.memory_child is not None:
        if args.memory_child[0] not in ("sft", "dpo"):
            p.error("--memory-child: KIND is sft or dpo")
        return args
    if args.quick:
        args.dim, args.layers, args.heads, args.kv_heads, args.ffn_dim = 64, 2, 4, 4, 192
        args.vocab, args.dialogues, args.seq, args.batch = 512, 80, 256, 2
        args.pairs = 40
        args.steps, args.warmup, args.block = 2, 1, 2
        args.memory_dim, args.memory_layers, args.memory_heads = 128, 2, 4
        args.memory_ffn_dim, args.memory_seq, args.memory_batch, args.memory_steps = 352, 128, 2, 2
    if args.block < 2 or args.steps < 1 or args.warmup < 0 or args.batch < 1:
        p.error("--block must be >= 2, --steps and --batch >= 1, --warmup >= 0")
    if args.memory_batch < 2 or args.memory_batch % 2 or args.memory_steps < 1 or args.lora_r < 1:
        p.error("--memory-batch must be even and >= 2, --memory-steps and --lora-r >= 1")
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if not args.stages or set(args.stages) - {"sft", "dpo", "memory"}:
        p.error("--stages: expected a comma-separated subset of sft, dpo, memory")
    return args


# --- data and checkpoints -----------------------------------------------------------------------


def random_model(tok, dim, layers, heads, kv_heads, ffn_dim, context, seed):
    """(config, model) of a randomly initialised Llama over `tok`'s vocabulary (also
    bench/serve.py's)."""
    import herd

    config = herd.ModelConfig(
        dim=dim,
        n_layers=layers,
        n_heads=heads,
        n_kv_heads=kv_heads,
        vocab_size=tok.vocab_size,
        ffn_dim=ffn_dim,
        max_seq_len=context,
    )
    return config, herd.build_model(config, seed=seed)


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
    config, model = random_model(tok, args.dim, args.layers, args.heads, args.kv_heads,
                                 args.ffn_dim, args.seq, args.seed)  # fmt: skip
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


def trl_training_args(args: argparse.Namespace, steps: int) -> dict:
    """The TrainingArguments both TRL engines share: CPU float32 and herd sft/dpo's optimizer and
    schedule (AdamW 0.9/0.95, eps 1e-8, wd 0.1, clip 1.0, 10 warm-up steps, cosine to 10 %)."""
    return {
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "learning_rate": args.lr,
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
        "warmup_steps": 10,  # herd sft's and herd dpo's default
        "weight_decay": 0.1,
        "adam_beta1": 0.9,
        "adam_beta2": 0.95,
        "adam_epsilon": 1e-8,
        "max_grad_norm": 1.0,
        "max_steps": steps,
    }


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
        **trl_training_args(args, total_steps),
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
        **trl_training_args(args, total),
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
    <|eot_id|>; herd's DPO term masks terminators out, as Llama 3 does)."""
    from herd.data.chat_data import termination_ids

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
        same["scored"] += [int(t not in stops) for t in c] == [
            int(m == 1) for m in e.chosen_mask
        ] and [int(t not in stops) for t in r] == [int(m == 1) for m in e.rejected_mask]
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


# --- memory: LoRA SFT against LoRA DPO, each in a fresh process --------------------------------

MEMORY_LONG = 0.9  # a memory-stage pair's longer side fills at least this share of --memory-seq
LORA_ALPHA = 32.0  # the update's scale alpha / r; irrelevant to memory


def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM (the RSS high-water mark) of this process in bytes; {} off Linux."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {
        key: int(rest.split()[0]) * 1024
        for key, _, rest in (line.partition(":") for line in lines)
        if key in ("VmRSS", "VmHWM")
    }


def max_rss() -> int:
    """ru_maxrss in bytes (Linux reports KiB)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_high_water() -> bool:
    """Reset this process's RSS high-water mark (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return "VmHWM" in proc_status()


def long_pair(rng: random.Random, words: list[str], tok, seq: int) -> dict:
    """A preference pair whose prompt + longer response has between MEMORY_LONG x `seq` and `seq`
    tokens: `preference_pair`'s, with short earlier exchanges added before the last user turn
    until it is that long (started afresh when one overshoots)."""
    from herd.tokenizer.chat import encode_dialog

    def length(row: dict) -> int:
        return max(
            len(encode_dialog(tok, row["prompt"] + row[side], add_generation_prompt=False).ids)
            for side in ("chosen", "rejected")
        )

    lo = int(MEMORY_LONG * seq)
    while True:
        row = preference_pair(rng, words)
        if row["chosen"] == row["rejected"]:
            continue
        n = length(row)
        while n < lo:
            exchange = [
                {"role": "user", "content": sentence(rng, words, 2, 8)},
                {"role": "assistant", "content": sentence(rng, words, 2, 8)},
            ]
            row["prompt"] = row["prompt"][:-1] + exchange + row["prompt"][-1:]
            n = length(row)
        if n <= seq:
            return row


def build_memory_setup(args: argparse.Namespace, setup: dict, root: Path) -> dict:
    """The memory stage's checkpoint (--memory-* sizes, the same tokenizer), dialogues that fit
    --memory-seq and long preference pairs: what both children read."""
    from herd.checkpoint.io import save_herd_folder
    from herd.tokenizer.chat import encode_dialog

    tok = setup["tokenizer"]
    config, model = random_model(tok, args.memory_dim, args.memory_layers, args.memory_heads,
                                 args.memory_heads, args.memory_ffn_dim, args.memory_seq,
                                 args.seed)  # fmt: skip
    base = save_herd_folder(config, model.state_dict(), root / "memory-base", tokenizer=tok.files())
    del model
    rng = random.Random(args.seed + 2)
    n_dialogues = max(40, 4 * args.memory_batch * args.memory_steps)
    dialogues = []
    while len(dialogues) < n_dialogues:
        messages = dialogue(rng, setup["words"])
        if len(encode_dialog(tok, messages, add_generation_prompt=False).ids) <= args.memory_seq:
            dialogues.append({"messages": messages})
    chats = root / "memory-chats.jsonl"
    chats.write_text("".join(json.dumps(r) + "\n" for r in dialogues), encoding="utf-8")
    # one epoch of pairs: every step trains on new ones, the reference pass covers them all
    n_pairs = args.memory_batch // 2 * args.memory_steps
    pairs = [long_pair(rng, setup["words"], tok, args.memory_seq) for _ in range(n_pairs)]
    pair_file = root / "memory-pairs.jsonl"
    pair_file.write_text("".join(json.dumps(r) + "\n" for r in pairs), encoding="utf-8")
    log(
        f"memory setup: {config.num_params() / 1e6:.2f} M parameters ({args.memory_layers} "
        f"layers, dim {args.memory_dim}), {len(dialogues)} dialogues, {n_pairs} pairs of "
        f"{int(MEMORY_LONG * args.memory_seq)}-{args.memory_seq} tokens (longer side)"
    )
    return {
        "config": config,
        "base": base,
        "chats": chats,
        "pairs": pair_file,
        "dialogues": len(dialogues),
        "n_pairs": n_pairs,
    }


def memory_child(kind: str, spec_path: Path) -> int:
    """`--memory-child sft|dpo SPEC`: one LoRA run of herd's Trainer in this fresh process; its
    memory figures go to the spec's `result` file as JSON. Nothing but torch and herd is imported
    (no transformers, no TRL), so the process holds what `herd sft` / `herd dpo` would."""
    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    from herd.posttrain.dpo_run import DPO_DEFAULTS, dpo_data
    from herd.posttrain.sft import SFT_DEFAULTS, load_stage_config, sft_data
    from herd.train.trainer import Trainer

    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("post_train: --memory-device cuda but CUDA is not available")
    run_dir = Path(spec["run_dir"])
    overrides = {
        "model.checkpoint": spec["base"],
        "data.path": spec["data"],
        "data.seq_len": str(spec["seq"]),
        # SFT: packed rows per step; DPO: pairs per step, each two rows (chosen, rejected)
        "data.batch_size": str(spec["batch"] if kind == "sft" else spec["batch"] // 2),
        "data.seed": str(spec["seed"]),
        "data.val_fraction": "0",  # no held-out set (nor its reference pass)
        "train.steps": str(spec["steps"] + 10),
        "train.out": str(run_dir),
        "train.device": spec["device"],
        "train.dtype": "float32",
        "train.log_every": str(10**9),
        "train.eval_every": str(10**9),
        "train.checkpoint_every": str(10**9),
        "optim.lr": str(spec["lr"]),
        "lora.r": str(spec["lora_r"]),
        "lora.alpha": str(LORA_ALPHA),
        "lora.target_modules": spec["lora_targets"],
    }
    if kind == "dpo":
        overrides |= {"dpo.beta": str(BETA), "dpo.alpha": str(ALPHA)}
    run = load_stage_config(None, overrides, SFT_DEFAULTS if kind == "sft" else DPO_DEFAULTS)
    data = sft_data(run) if kind == "sft" else dpo_data(run, run_dir)
    out: dict = {
        "kind": kind,
        "device": spec["device"],
        "rss_after_data": proc_status().get("VmRSS"),
        "max_rss_after_data": max_rss(),
    }

    def loaded(where: str) -> None:
        """The model is loaded with its adapters: the baseline, and the high-water marks reset."""
        out["baseline_at"] = where
        if cuda:
            torch.cuda.synchronize(device)
            out["cuda_after_load"] = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        status = proc_status()
        out["max_rss_until_load"] = max_rss()
        out["hwm_until_load"] = status.get("VmHWM")  # the process's peak so far, loading included
        out["rss_after_load"] = status.get("VmRSS")
        out["high_water_reset"] = reset_high_water()

    if kind == "dpo":  # the Trainer calls prepare (the reference pass) right after loading
        prepare = data.objective.prepare

        def measured_prepare(*a, **k):
            loaded("the start of the reference pass")
            start = time.perf_counter()
            prepare(*a, **k)
            out["reference_s"] = time.perf_counter() - start
            out["hwm_after_reference"] = proc_status().get("VmHWM")
            if cuda:
                out["cuda_peak_after_reference"] = torch.cuda.max_memory_allocated(device)

        data.objective.prepare = measured_prepare
    trainer = Trainer(run, run_dir, data=data)
    # SFT: after loading, the constructor builds the optimizer (its state comes at the first
    # step); DPO, should the Trainer not call prepare: its reference pass is not in the figures
    if "baseline_at" not in out:
        loaded("the end of the Trainer's constructor")
    take, shapes = trainer.loader.next, []

    def shape_next():  # the [rows, positions] of each forward the step runs
        step = take()
        for mb in step.micro:
            if kind == "sft":
                shapes.append(list(mb.inputs.shape))
            else:
                width = max(mb.chosen_ids.shape[1], mb.rejected_ids.shape[1])
                shapes.append([2 * mb.index.numel(), width])
        return step

    trainer.loader.next = shape_next
    seconds = []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        trainer.train_step()
        if cuda:
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    status = proc_status()
    params = list(trainer.model.parameters())
    out |= {
        "max_rss_end": max_rss(),
        "hwm_end": status.get("VmHWM"),
        "rss_end": status.get("VmRSS"),
        "params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "frozen_bytes": sum(p.numel() * p.element_size() for p in params if not p.requires_grad),
        "shapes": shapes,
        "step_s": seconds,
    }
    if cuda:
        out["cuda_peak"] = torch.cuda.max_memory_allocated(device)
    Path(spec["result"]).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def memory_figures(child: dict) -> dict:
    """A child's measures: the process's peak RSS, and its peak RSS increase over the RSS right
    after the model was loaded; on CUDA the allocator's peak and its increase.

    On Linux both come from VmHWM, the RSS high-water mark of the process's own address space:
    its peak until the load, reset there (/proc/self/clear_refs), and its peak after. ru_maxrss
    would do for the first only in a process that was not forked: a child started from this
    one reports the benchmark's own RSS at the fork (transformers and TRL imported, ~500 MiB) as
    its ru_maxrss, and a reset does not reach it once a thread has exited. Elsewhere ru_maxrss is
    all there is: the increase is then over the whole run, loading's peak included."""
    if child["high_water_reset"]:
        until_load, end = child["hwm_until_load"], child["hwm_end"]
        increase, how = end - child["rss_after_load"], "VmHWM, reset at the load"
    else:
        until_load, end = child["max_rss_until_load"], child["max_rss_end"]
        increase, how = end - child["rss_after_load"], "ru_maxrss, loading's peak included"
    figures = {
        "peak_rss": max(until_load, end),
        "peak_rss_from": "VmHWM" if child["high_water_reset"] else "ru_maxrss",
        "rss_after_load": child["rss_after_load"],
        "peak_rss_increase": increase,
        "increase_from": how,
        # weights, adapters and training, less the runtime and the data: RSS before the Trainer
        "rss_before_trainer": child["rss_after_data"],
        "model_and_training": end - child["rss_after_data"],
        "peak_set_while_loading": until_load >= end,
        "baseline_at": child["baseline_at"],
        "step_ms_median": 1e3 * statistics.median(child["step_s"]),
    }
    if "hwm_after_reference" in child and child["high_water_reset"]:
        figures["reference_pass_increase"] = child["hwm_after_reference"] - child["rss_after_load"]
        figures["reference_s"] = child["reference_s"]
    if "cuda_peak" in child:
        figures |= {
            "cuda_peak": child["cuda_peak"],
            "cuda_after_load": child["cuda_after_load"],
            "cuda_increase": child["cuda_peak"] - child["cuda_after_load"],
        }
        if "cuda_peak_after_reference" in child:
            reference = child["cuda_peak_after_reference"] - child["cuda_after_load"]
            figures["cuda_reference_pass_increase"] = reference
    return figures


def memory_stage(args: argparse.Namespace, setup: dict, root: Path) -> dict:
    """herd LoRA SFT and herd LoRA DPO on the same model, each in a fresh process (`--memory-
    child`), one after the other; their peaks and the ratio DPO / SFT."""
    import subprocess

    mem = build_memory_setup(args, setup, root)
    children = {}
    for kind in ("sft", "dpo"):
        spec = {
            "base": str(mem["base"]),
            "data": str(mem["chats"] if kind == "sft" else mem["pairs"]),
            "seq": args.memory_seq,
            "batch": args.memory_batch,
            "steps": args.memory_steps,
            "seed": args.seed,
            "lr": args.lr,
            "lora_r": args.lora_r,
            "lora_targets": args.lora_targets,
            "device": args.memory_device,
            "threads": args.threads,
            "run_dir": str(root / f"memory-{kind}"),
            "result": str(root / f"memory-{kind}.json"),
        }
        spec_path = root / f"memory-{kind}-spec.json"
        spec_path.write_text(json.dumps(spec, indent=2) + "\n")
        command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", kind]
        start = time.perf_counter()
        done = subprocess.run([*command, str(spec_path)], capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"post_train: the {kind} memory child failed ({done.returncode})")
        children[kind] = json.loads(Path(spec["result"]).read_text())
        f = memory_figures(children[kind])
        log(
            f"memory: LoRA {kind.upper()} in a fresh process, {time.perf_counter() - start:.1f} s: "
            f"peak RSS {f['peak_rss'] / 2**20:,.0f} MiB, increase over the loaded model "
            f"{f['peak_rss_increase'] / 2**20:,.0f} MiB"
        )
    sft, dpo = memory_figures(children["sft"]), memory_figures(children["dpo"])
    frozen = children["sft"]["frozen_bytes"]
    result = {
        "device": args.memory_device,
        "model": {
            "params": children["sft"]["params"],
            "trainable_params": children["sft"]["trainable_params"],
            "frozen_bytes": frozen,
            "layers": args.memory_layers,
            "dim": args.memory_dim,
            "heads": args.memory_heads,
            "ffn_dim": args.memory_ffn_dim,
            "vocab": mem["config"].vocab_size,
        },
        "lora": {"r": args.lora_r, "alpha": LORA_ALPHA, "targets": args.lora_targets},
        "micro_batch": {
            "sft": f"{args.memory_batch} packed rows x {args.memory_seq} positions",
            "dpo": f"{args.memory_batch // 2} pair{'s' if args.memory_batch > 2 else ''}, "
            f"chosen and rejected each <= {args.memory_seq} tokens (the longer >= "
            f"{int(MEMORY_LONG * args.memory_seq)}), "
            f"one forward over [{args.memory_batch}, width]",
            "sft_shapes": children["sft"]["shapes"],
            "dpo_shapes": children["dpo"]["shapes"],
        },
        "steps": args.memory_steps,
        "pairs": mem["n_pairs"],
        "dialogues": mem["dialogues"],
        "sft": sft,
        "dpo": dpo,
        "ratio_peak_rss": dpo["peak_rss"] / sft["peak_rss"],
        "ratio_peak_rss_increase": dpo["peak_rss_increase"] / sft["peak_rss_increase"],
        "ratio_model_and_training": dpo["model_and_training"] / sft["model_and_training"],
        # TRL's DPOTrainer without PEFT (ref_model None) loads a second full model: at least the
        # parameter bytes more, all the time
        "full_reference_copy_bytes": frozen,
        "ratio_increase_with_full_reference": (dpo["peak_rss_increase"] + frozen)
        / sft["peak_rss_increase"],
        "target": 1.2,
        "children": children,
    }
    if "cuda_peak" in sft:
        result["ratio_cuda_peak"] = dpo["cuda_peak"] / sft["cuda_peak"]
        result["ratio_cuda_increase"] = dpo["cuda_increase"] / sft["cuda_increase"]
        result["ratio_cuda_increase_with_full_reference"] = (dpo["cuda_increase"] + frozen) / sft[
            "cuda_increase"
        ]
    return result


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


def print_memory(args: argparse.Namespace, mem: dict) -> None:
    m, s, d = mem["model"], mem["sft"], mem["dpo"]
    mib = 2**20
    cuda = "cuda_peak" in s

    def widths(shapes: list) -> str:
        w = sorted({x[1] for x in shapes})
        return f"{w[0]}" if len(w) == 1 else f"{w[0]}-{w[-1]}"

    print()
    print(
        f"LoRA peak memory, herd SFT vs herd DPO, float32 on {mem['device']}, each in a fresh "
        f"process: {m['layers']} layers, dim {m['dim']}, vocab {m['vocab']}, "
        f"{m['params'] / 1e6:.1f} M parameters ({m['frozen_bytes'] / mib:,.0f} MiB frozen), "
        f"LoRA r {mem['lora']['r']} on {mem['lora']['targets']} "
        f"({m['trainable_params'] / 1e6:.2f} M trainable), {mem['steps']} steps each, "
        f"{args.threads} threads"
    )
    mb = mem["micro_batch"]
    print(
        f"micro-batch: SFT {mb['sft']}; DPO {mb['dpo']}; forwards seen: SFT "
        f"[{args.memory_batch}, {widths(mb['sft_shapes'])}], DPO [{args.memory_batch}, "
        f"{widths(mb['dpo_shapes'])}]"
    )
    head = f"{'MiB':<6}{'peak RSS':>10}{'before Trainer':>16}{'at load':>9}{'increase':>10}"
    head += f"{'weights+training':>18}"
    if cuda:
        head += f"{'CUDA peak':>11}{'at load':>9}{'increase':>10}"
    print(head + f"{'ms/step':>9}")
    for name, r in (("SFT", s), ("DPO", d)):
        line = (
            f"{name:<6}{r['peak_rss'] / mib:>10,.0f}{r['rss_before_trainer'] / mib:>16,.0f}"
            f"{r['rss_after_load'] / mib:>9,.0f}{r['peak_rss_increase'] / mib:>10,.0f}"
            f"{r['model_and_training'] / mib:>18,.0f}"
        )
        if cuda:
            line += (
                f"{r['cuda_peak'] / mib:>11,.0f}{r['cuda_after_load'] / mib:>9,.0f}"
                f"{r['cuda_increase'] / mib:>10,.0f}"
            )
        print(line + f"{r['step_ms_median']:>9,.0f}")
    ratios = {
        "peak RSS": mem["ratio_peak_rss"],
        "weights+training": mem["ratio_model_and_training"],
        "increase over the loaded model": mem["ratio_peak_rss_increase"],
    }
    if cuda:
        ratios |= {"CUDA peak": mem["ratio_cuda_peak"], "CUDA increase": mem["ratio_cuda_increase"]}
    over = [name for name, r in ratios.items() if r > mem["target"]]
    print(
        "ratio LoRA DPO / LoRA SFT: "
        + ", ".join(f"{name} {r:.2f}x" for name, r in ratios.items())
        + f"; target <= {mem['target']}x: "
        + (f"exceeded on {', '.join(over)}" if over else "met on every measure")
    )
    print(
        f"peak RSS = the run's process, its RSS high-water mark ({s['peak_rss_from']}): Python, "
        "torch, herd, data, weights and training (loading's own peak when it is the highest); "
        "before Trainer = RSS with the data loaded, before the Trainer builds the model; at load "
        "= RSS once the Trainer has loaded the model and added the adapters (SFT: at "
        f"{s['baseline_at']}; DPO: at {d['baseline_at']}); increase = the RSS high-water mark "
        "from then to the end "
        f"({s['increase_from']}) less RSS at load: what training adds to the loaded model (DPO: "
        "its reference pass and its steps); weights+training = that high-water mark less RSS "
        "before Trainer (no runtime, no data)"
        + (
            "; CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats at the load "
            "(the weights stay allocated, so it counts them) and memory_allocated at the load"
            if cuda
            else ""
        )
    )
    if "reference_pass_increase" in d:
        n = args.memory_batch // 2
        print(
            f"DPO's reference pass ({mem['pairs']} pairs, {n} per forward, no gradient, "
            f"{d['reference_s']:.1f} s): high-water mark {d['reference_pass_increase'] / mib:,.0f} "
            "MiB over RSS at load"
            + (
                f", CUDA peak {d['cuda_reference_pass_increase'] / mib:,.0f} MiB over the load"
                if "cuda_reference_pass_increase" in d
                else ""
            )
        )
    elif d["baseline_at"] != "the start of the reference pass":
        print("note: the Trainer did not call the DPO objective's prepare: no reference pass seen")
    if s["peak_set_while_loading"] or d["peak_set_while_loading"]:
        print(
            "note: a process's peak RSS was set while loading (reading the checkpoint), not while "
            "training: the peak RSS ratio says little there, the other ratios are the measure"
        )
    extra = mem["full_reference_copy_bytes"]
    base = s["cuda_increase" if cuda else "peak_rss_increase"]
    ratio = mem[f"ratio{'_cuda' if cuda else ''}_increase_with_full_reference"]
    print(
        f"a second full copy of the weights as reference (TRL DPOTrainer's default without PEFT: "
        f"ref_model None loads one) would add at least {extra / mib:,.0f} MiB (its parameter "
        f"bytes): DPO's increase would be {ratio:.2f}x SFT's ({base / mib:,.0f} MiB)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child is not None:  # before transformers and TRL are imported
        kind, spec = args.memory_child
        return memory_child(kind, Path(spec))
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
        if "memory" in args.stages:
            results["stages"]["memory"] = memory_stage(args, setup, root)

    if "sft" in results["stages"]:
        print_sft(args, setup, results["stages"]["sft"])
    if "dpo" in results["stages"]:
        print_dpo(args, setup, results["stages"]["dpo"])
    if "memory" in results["stages"]:
        print_memory(args, results["stages"]["memory"])
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
