"""The `herd` command: a table of subcommands, each delegating to one module.

Every subcommand has `--help`; user errors (`HerdError`, bad arguments) print one line on stderr and
exit with code 2. Heavy imports (torch, model code) happen inside the handlers, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from herd import options
from herd.errors import HerdError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage text stays available through --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        metavar="PRESET_OR_CHECKPOINT",
        help="a preset name (see `herd info --list`) or a checkpoint: herd/HF/Meta folder or "
        "llama2.c .bin file",
        nargs="?",
    )
    options.add_json(p, "the architecture and counts")
    p.add_argument("--list", action="store_true", help="list the preset names and exit")


def _run_info(args: argparse.Namespace) -> None:
    from herd.info import run_info

    run_info(args.target, as_json=args.json, list_presets=args.list)


def _add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "src",
        metavar="SRC",
        help="source checkpoint (folder or llama2.c .bin file); with --merge-lora, a PEFT LoRA "
        "adapter folder (adapter_config.json + adapter_model.safetensors)",
    )
    p.add_argument("dst", metavar="DST", help="destination folder (must not exist)")
    p.add_argument(
        "--from",
        dest="src_format",
        default="auto",
        choices=["auto", "herd", "hf", "meta", "llama2c"],
        help="source format (with --merge-lora: the base's); auto detects herd (config.json "
        "with format=herd), hf (config.json), meta (params.json + consolidated.NN.pth) or "
        "llama2c (.bin) (default: auto)",
    )
    p.add_argument(
        "--to",
        dest="dst_format",
        default="herd",
        choices=["herd", "hf"],
        help="destination format: herd folder, or a Hugging Face folder that transformers' "
        "LlamaForCausalLM loads (default: herd)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="cast weights to this dtype (default: keep the source dtype)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DST if it exists (only after the new folder is completely written)",
    )
    p.add_argument(
        "--merge-lora",
        action="store_true",
        help="SRC is a LoRA adapter: write its base checkpoint with W + (alpha/r) B A merged into "
        "every adapted projection, and the base's tokenizer files",
    )
    p.add_argument(
        "--base",
        metavar="BASE",
        default=None,
        help="with --merge-lora: the base checkpoint (default: the adapter's "
        "base_model_name_or_path)",
    )


def _run_convert(args: argparse.Namespace) -> None:
    from herd.checkpoint.convert import convert

    out = convert(
        args.src,
        args.dst,
        args.src_format,
        args.dst_format,
        args.dtype,
        args.overwrite,
        merge_lora=args.merge_lora,
        base=args.base,
    )
    print(f"wrote {out}")


def _add_sampling(p: argparse.ArgumentParser) -> None:
    """Options shared by `generate` and `chat`."""
    p.add_argument(
        "--max-new-tokens", type=int, default=128, help="tokens to generate (default 128)"
    )
    p.add_argument(
        "--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (0.8)"
    )
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (0.95)")
    p.add_argument(
        "--top-k", type=int, default=0, help="keep only the k most likely tokens; 0 = off"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling (default 0)")
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="STR",
        help="stop when the generated text contains STR (repeatable); the tokenizer's "
        "end-of-sequence and end-of-turn tokens always stop",
    )
    p.add_argument("--system", help="system prompt (with --chat, and in `herd chat`)")
    options.add_device(p)
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile the decode step (default: on for CUDA; on CPU it costs ~20-50 s up front "
        "and then decodes ~3x faster)",
    )


def _add_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint folder or llama2.c .bin")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (needs a tokenizer file in the checkpoint)")
    src.add_argument(
        "--prompt-ids",
        type=options.token_ids,
        metavar="IDS",
        help="the prompt as token ids, separated by commas or spaces (e.g. 1,450,4996); needs no "
        "tokenizer, and is used as given (no BOS added)",
    )
    p.add_argument(
        "--chat",
        action="store_true",
        help="send --prompt as a user turn in the checkpoint's chat format (Llama 3 or Llama 2-Chat)",
    )
    p.add_argument(
        "--infill",
        action="store_true",
        help="fill the one <|mask_0|> in --prompt (models trained with data.objective mskuni or "
        "mskbi); prints the prompt with the generated span in place",
    )
    options.add_bos(p, default=True, what="--prompt")
    p.add_argument(
        "--prompt-attention",
        choices=["auto", "causal", "bidirectional"],
        default="auto",
        help="how the prompt attends in the prefill: bidirectional = its tokens attend each other "
        "both ways (with --infill: the context before the final <|mask_0|>), as models trained "
        "with data.objective nxtpre or mskbi saw their prefix or context; auto = bidirectional "
        "when CHECKPOINT sits in a herd run folder (RUN/checkpoints/step-N) whose config.toml "
        "trained such an objective, else causal",
    )
    _add_image(p, "the prompt")
    _add_sampling(p)


def _add_image(p: argparse.ArgumentParser, where: str) -> None:
    """`--image` (Llama 3.2 Vision models), `--audio` (speech models) and `--video` (video
    models) for generate and chat."""
    p.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH",
        help=f"show the picture at PATH to a vision model (Llama 3.2 Vision; repeatable, in "
        f"order): {where} gets one <|image|> token per picture before its text, as Meta's chat "
        "format places them (with --prompt-ids, the ids must hold them already); pictures are "
        "resized and cut into the model's tiles as transformers' MllamaImageProcessor does",
    )
    p.add_argument(
        "--audio",
        action="append",
        default=[],
        metavar="PATH",
        help=f"let a speech model hear the clip at PATH (WAV, FLAC, OGG; resampled to 16 kHz; "
        f"repeatable, in order): {where} gets <|speech_start|>, one <|speech|> per 80 ms and "
        "<|speech_end|> per clip before its text (Llama 3 section 8)",
    )
    p.add_argument(
        "--video",
        action="append",
        default=[],
        metavar="PATH",
        help=f"show the clip at PATH (a video file PyAV decodes, or a folder of frame images) to "
        f"a video model: its frames are sampled evenly to the model's video.max_frames and "
        f"{where} gets one <|video|> token before its text (Llama 3 section 7); one clip",
    )


def _run_generate(args: argparse.Namespace) -> None:
    from herd.textstream import run_generate

    run_generate(args)


def _add_chat(p: argparse.ArgumentParser) -> None:
    from herd.guard.cli import add_guard_options

    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint folder with a tokenizer")
    _add_image(p, "the first user turn (and the first after /reset)")
    _add_sampling(p)
    add_guard_options(p, chat=True)
    p.set_defaults(max_new_tokens=512)


def _run_chat(args: argparse.Namespace) -> None:
    from herd.textstream import run_chat

    run_chat(args)


def _add_tokenizer(p: argparse.ArgumentParser) -> None:
    from herd.tokenizer.commands import add_arguments

    add_arguments(p)


def _run_tokenizer(args: argparse.Namespace) -> None:
    from herd.tokenizer.commands import run

    run(args)


def _add_data(p: argparse.ArgumentParser) -> None:
    from herd.data.commands import add_arguments

    add_arguments(p)


def _run_data(args: argparse.Namespace) -> None:
    from herd.data.commands import run

    run(args)


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", metavar="CONFIG.toml", help="run config (TOML)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue RUN_DIR from its newest intact checkpoint, with its config.toml",
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _config_fields_help()


def _config_fields_help() -> str:
    """Every run-config field with its default and meaning (from the dataclass metadata)."""
    import dataclasses

    from herd.model.config import ModelConfig
    from herd.train.config import SECTIONS

    lines = [
        "Every field of every section, with its default. Set them in CONFIG.toml ([train] steps",
        "= 200) or override them as --SECTION.FIELD VALUE (e.g. --train.steps 200).",
        "",
        "[model]: preset = demo (a name from `herd info --list`), or checkpoint = FOLDER to start",
        "from a checkpoint's architecture and weights (fine-tuning); then any of these to change it:",
    ]
    for f in dataclasses.fields(ModelConfig):
        lines.append(f"  model.{f.name:<24} {f.metadata.get('help', '')}")
    for section, cls in SECTIONS.items():
        lines += ["", f"[{section}]: {cls.__doc__.strip().splitlines()[0]}"]
        for f in dataclasses.fields(cls):
            lines.append(f"  {section}.{f.name:<24} {f.metadata.get('help', '')} ({f.default})")
    return "\n".join(lines)


def _run_train(args: argparse.Namespace) -> None:
    from herd.train.commands import run_train

    run_train(args)


def _add_posttrain(p: argparse.ArgumentParser, about: str) -> None:
    """`herd train`'s arguments, with what the stage reads in front of the field list."""
    import textwrap

    _add_train(p)
    p.epilog = textwrap.fill(about, width=90) + "\n\n" + p.epilog


def _add_sft(p: argparse.ArgumentParser) -> None:
    _add_posttrain(
        p,
        "[model] checkpoint = FOLDER names the checkpoint to fine-tune (its tokenizer gives the "
        "chat format); [data] path names the conversations: JSONL, Parquet, a folder of them or "
        'a Hugging Face dataset, rows {"messages": [{"role", "content"}, ...]}; [lora] r > 0 '
        "trains adapters only. Defaults that differ from `herd train`: optim.lr 1e-5, "
        "optim.warmup_steps 10.",
    )


def _run_sft(args: argparse.Namespace) -> None:
    from herd.posttrain.sft import run_sft

    run_sft(args)


def _add_dpo(p: argparse.ArgumentParser) -> None:
    _add_posttrain(
        p,
        "[model] checkpoint = FOLDER names the checkpoint to train (usually an SFT result; it is "
        "also the reference, whose log-probabilities are computed once into the run folder); "
        "[data] path names preference pairs: JSONL, Parquet, a folder of them or a Hugging Face "
        'dataset, rows {"prompt": [messages], "chosen": [messages], "rejected": [messages]}; '
        "data.seq_len is the longest prompt + response kept; [dpo] beta and alpha; [lora] r > 0 "
        "trains adapters only. Defaults that differ from `herd train`: optim.lr 1e-5, "
        "optim.warmup_steps 10.",
    )


def _run_dpo(args: argparse.Namespace) -> None:
    from herd.posttrain.dpo_run import run_dpo

    run_dpo(args)


def _add_gatt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dialogues",
        required=True,
        metavar="F",
        help='multi-turn dialogues: JSONL or Parquet rows {"messages": [...]} (the SFT format); '
        "their user turns (and system message) are kept, their assistant replies resampled",
    )
    p.add_argument(
        "--instructions",
        metavar="F",
        default=None,
        help="a UTF-8 text file, one instruction per line (# comments and blank lines skipped); "
        "default: synthetic ones combining hobbies, languages and public figures, half of them "
        "shortened (Llama 2 section 3.3)",
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="CKPT",
        help="checkpoint that samples the replies (with a chat tokenizer)",
    )
    p.add_argument("--out", required=True, metavar="SFT.jsonl", help="the SFT rows to write")
    p.add_argument(
        "--seed", type=int, default=0, help="picks the instructions and seeds the sampling (0)"
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=128, help="longest sampled reply, in tokens (128)"
    )
    p.add_argument(
        "--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (0.8)"
    )
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (0.95)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="dialogues sampled together (8); each samples from its own seeded generator",
    )
    p.add_argument(
        "--placement",
        choices=["system", "first-user"],
        default="system",
        help="where the instruction stays in the written rows: the system message (in Llama "
        "2's format, the <<SYS>> block that prefixes the first user turn) or appended to the "
        "first user turn as it stood while sampling (default: system)",
    )
    p.add_argument(
        "--every-turn",
        action="store_true",
        help="one row per assistant turn (the dialogue cut after it, that turn trained) instead "
        "of one row per dialogue training its last turn",
    )
    p.add_argument(
        "--keep-unfinished",
        action="store_true",
        help="keep rows whose trained reply hit --max-new-tokens before its end-of-turn token "
        "(dropped by default)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it exists (once the new is whole)"
    )
    options.add_device(p)
    options.add_json(p, "the counts")
    p.epilog = (
        "Each dialogue gets one instruction; every assistant reply is sampled with the "
        "instruction appended to every user turn; the rows written keep it in the first turn "
        'only, and every assistant reply but the last carries "weight": 0, so `herd sft` '
        "trains on the last turn alone. An interrupted run leaves OUT.partial; rerunning the "
        "same command continues from it."
    )


def _run_gatt(args: argparse.Namespace) -> None:
    from herd.posttrain.gatt import run_gatt

    run_gatt(args)


def _add_ppo(p: argparse.ArgumentParser) -> None:
    _add_posttrain(
        p,
        "[model] checkpoint = FOLDER names the policy to train (the SFT model; a frozen copy of "
        "it, or with [lora] r > 0 the policy with its adapters off, is the KL reference); [data] "
        'path names the prompts: rows {"messages": [... ending with a user turn]} or {"prompt": '
        '"text"}, optionally "safety": true; [ppo] reward_model = a `herd rm` checkpoint (also '
        "the value model's start), safety_reward_model, batch_size, mini_batch_size, ppo_epochs, "
        "kl_coef, clip, max_new_tokens, temperature. train.steps counts PPO iterations. Defaults "
        "that differ from `herd train` (Llama 2): AdamW (0.9, 0.95), eps 1e-5, constant lr 1e-6, "
        "train.steps 200, train.checkpoint_every 20.",
    )


def _run_ppo(args: argparse.Namespace) -> None:
    from herd.posttrain.ppo_run import run_ppo

    run_ppo(args)


RM_ACTIONS = ("train", "score", "eval")
GUARD_ACTIONS = ("check", "train", "eval")
AGENT_ACTIONS = ("chat", "memory", "feedback", "director")


def _add_rm(p: argparse.ArgumentParser) -> None:
    from herd.posttrain.reward_cli import add_arguments

    add_arguments(
        p,
        lambda train: _add_posttrain(
            train,
            "[model] checkpoint = FOLDER names the chat / SFT checkpoint the reward model starts "
            "from (its output layer is replaced by a scalar score head); [data] path names "
            'preference pairs as for `herd dpo`, rows {"prompt", "chosen", "rejected"} with an '
            'optional "rating" (significantly better, better, slightly better, negligibly '
            'better / unsure, or 3-0) or "margin" number; [rm] margin = none | small | large. '
            "Defaults that differ from `herd train`: one epoch (train.steps 0 = rm.epochs), "
            "optim.lr 1e-5, a warm-up of 3% (optim.warmup_steps -1 = rm.warmup_fraction).",
        ),
    )


def _run_rm(args: argparse.Namespace) -> None:
    from herd.posttrain.reward_cli import run

    run(args)


def _add_guard(p: argparse.ArgumentParser) -> None:
    from herd.guard.cli import add_arguments

    add_arguments(
        p,
        lambda train: _add_posttrain(
            train,
            "[model] checkpoint = FOLDER names the checkpoint to fine-tune (a Llama 3 chat "
            'tokenizer); [data] path names labelled conversations, rows {"messages": [...], '
            '"label": "safe" | "unsafe", "categories": ["S1", ...]}; [guard] policy = '
            "POLICY.toml (default Llama Guard 3's S1-S14), drop_other and drop_violated (category "
            "dropping), copies. Each row is trained as the guard prompt and its answer, through "
            "`herd sft`. Defaults that differ from `herd train`: optim.lr 1e-5, "
            "optim.warmup_steps 10.",
        ),
    )


def _run_guard(args: argparse.Namespace) -> None:
    from herd.guard.cli import run

    run(args)


def _add_agent(p: argparse.ArgumentParser) -> None:
    from herd.agent.cli import add_agent_arguments

    add_agent_arguments(p)


def _run_agent(args: argparse.Namespace) -> None:
    from herd.agent.cli import run_agent

    run_agent(args)


def _add_index(p: argparse.ArgumentParser) -> None:
    from herd.agent.cli import add_index_arguments

    add_index_arguments(p)


def _run_index(args: argparse.Namespace) -> None:
    from herd.agent.cli import run_index

    run_index(args)


def _add_fourd(p: argparse.ArgumentParser) -> None:
    from herd.fourd.cli import add_arguments

    add_arguments(p)


def _run_fourd(args: argparse.Namespace) -> None:
    from herd.fourd.cli import run

    run(args)


def _add_fourd_eval(p: argparse.ArgumentParser) -> None:
    from herd.fourd.cli import add_eval_arguments

    add_eval_arguments(p)


def _run_fourd_eval(args: argparse.Namespace) -> None:
    from herd.fourd.clip_eval import run

    run(args)


def _add_best_of_n(p: argparse.ArgumentParser) -> None:
    from herd.posttrain.best_of_n import add_arguments

    add_arguments(p)


def _run_best_of_n(args: argparse.Namespace) -> None:
    from herd.posttrain.best_of_n import run_best_of_n

    run_best_of_n(args)


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="folder for everything the demo writes")
    p.add_argument(
        "--minutes", type=float, default=3.0, help="training time budget; sets the step count (3)"
    )
    p.add_argument("--steps", type=int, default=None, help="training steps (overrides --minutes)")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size (4096)")
    p.add_argument(
        "--max-files",
        type=int,
        default=None,
        help="use only the first N standard-library files (a quick look; default: all)",
    )


def _run_demo(args: argparse.Namespace) -> None:
    from herd.demo import run_demo

    run_demo(args.out, args.steps, args.vocab_size, args.minutes, args.max_files)


def _add_eval(p: argparse.ArgumentParser) -> None:
    from herd.eval.commands import add_eval_arguments

    add_eval_arguments(p)


def _run_eval(args: argparse.Namespace) -> None:
    from herd.eval.commands import run_eval

    run_eval(args)


def _add_vocab(p: argparse.ArgumentParser) -> None:
    from herd.vocab.commands import add_vocab_arguments

    add_vocab_arguments(p)


def _run_vocab(args: argparse.Namespace) -> None:
    from herd.vocab.commands import run_vocab

    run_vocab(args)


def _add_scaling(p: argparse.ArgumentParser) -> None:
    from herd.scaling.commands import add_scaling_arguments

    add_scaling_arguments(p)


def _run_scaling(args: argparse.Namespace) -> None:
    from herd.scaling.commands import run_scaling

    run_scaling(args)


def _add_stability(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(
        dest="stability_command", metavar="ACTION", required=True, parser_class=type(p)
    )
    r = sub.add_parser(
        "report",
        help="stability dashboards (PNG) and a summary of a run",
        description="Draw plots/stability.png (loss with spikes, per-layer "
        "gradient RMS vs eps, normalised-update heat map, largest update bimodality "
        "among each layer's matrices, update/gradient cosine) and write "
        "plots/stability_summary.txt from a run folder.",
    )
    r.add_argument("run_dir", metavar="RUN_DIR", help="a herd run folder")


def _run_stability(args: argparse.Namespace) -> None:
    from herd.train.stability_report import report

    png, text = report(args.run_dir)
    print(text)
    print(f"wrote {png}")


def _add_lm_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "lm_eval_args",
        nargs=argparse.REMAINDER,
        metavar="LM_EVAL_ARGS",
        help="lm-evaluation-harness's own options, e.g. --model herd --model_args "
        "checkpoint=DIR --tasks belebele_eng_Latn --batch_size 8 (lm_eval's full option list: "
        "`herd lm-eval --model herd --help` is lm_eval's own help)",
    )


def _run_lm_eval(args: argparse.Namespace) -> None:
    from herd.eval.commands import run_lm_eval

    run_lm_eval(args.lm_eval_args)


def _add_serve(p: argparse.ArgumentParser) -> None:
    from herd.serve.cli import add_arguments

    add_arguments(p)


def _run_serve(args: argparse.Namespace) -> None:
    from herd.serve.cli import run_serve

    run_serve(args)


# name -> (help, add arguments, handler)
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "demo": (
        "tokenize, prepare and pretrain on the stdlib source, then complete code",
        _add_demo,
        _run_demo,
    ),
    "info": (
        "architecture and exact parameter count of a preset or checkpoint",
        _add_info,
        _run_info,
    ),
    "convert": (
        "convert checkpoints between herd, Hugging Face, Meta and llama2.c formats",
        _add_convert,
        _run_convert,
    ),
    "generate": ("generate text from a checkpoint, streaming tokens", _add_generate, _run_generate),
    "chat": ("chat with a checkpoint in its chat format (a REPL)", _add_chat, _run_chat),
    "tokenizer": ("encode, decode, train and inspect tokenizers", _add_tokenizer, _run_tokenizer),
    "data": ("prepare token shards from text, JSONL, Parquet or the stdlib", _add_data, _run_data),
    "train": ("pretrain a model on prepared token shards", _add_train, _run_train),
    "sft": (
        "supervised fine-tuning of a checkpoint on conversations (assistant tokens only)",
        _add_sft,
        _run_sft,
    ),
    "dpo": (
        "direct preference optimisation of a checkpoint on preference pairs (Llama 3 recipe)",
        _add_dpo,
        _run_dpo,
    ),
    "gatt": (
        "Ghost Attention data: dialogues resampled to follow an instruction (Llama 2 sec. 3.3)",
        _add_gatt,
        _run_gatt,
    ),
    "rm": (
        "train reward models on preference pairs (Llama 2 recipe), score and evaluate them",
        _add_rm,
        _run_rm,
    ),
    "ppo": (
        "RLHF with PPO against reward models: rollouts, KL-penalised rewards, GAE (Llama 2)",
        _add_ppo,
        _run_ppo,
    ),
    "best-of-n": (
        "rejection sampling: K samples per prompt, the best by a reward model kept as SFT data",
        _add_best_of_n,
        _run_best_of_n,
    ),
    "guard": (
        "Llama Guard 3 safety classification: check conversations, train and evaluate guards",
        _add_guard,
        _run_guard,
    ),
    "agent": (
        "a BlenderBot 3-style agent (search, memory, tools, safety, feedback) in a terminal; its "
        "memory, feedback export and Director head",
        _add_agent,
        _run_agent,
    ),
    "4d": (
        "text to a dynamic 3D scene (MAV3D): a HexPlane field optimised by score distillation "
        "from a text-to-video diffusion model; renders, a viewer page, meshes",
        _add_fourd,
        _run_fourd,
    ),
    "4d-eval": (
        "CLIP R-precision of herd 4d runs: does CLIP pick each run's prompt for its renders",
        _add_fourd_eval,
        _run_fourd_eval,
    ),
    "index": (
        "build and query local BM25 search indexes (the agent's search backend)",
        _add_index,
        _run_index,
    ),
    "stability": (
        "Adam-instability dashboards and loss-spike summary of a training run",
        _add_stability,
        _run_stability,
    ),
    "vocab": (
        "build multilingual vocabularies (XLM-V) and compare tokenizers across languages",
        _add_vocab,
        _run_vocab,
    ),
    "scaling": (
        "fit scaling laws, plan compute-optimal runs, run IsoFLOP sweeps",
        _add_scaling,
        _run_scaling,
    ),
    "eval": (
        "Belebele, multiple-choice and perplexity evaluation of a checkpoint",
        _add_eval,
        _run_eval,
    ),
    "lm-eval": (
        "run lm-evaluation-harness tasks on herd checkpoints (lm_eval's CLI, model 'herd')",
        _add_lm_eval,
        _run_lm_eval,
    ),
    "serve": (
        "an OpenAI-compatible HTTP server (continuous batching, streaming, metrics)",
        _add_serve,
        _run_serve,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="herd",
        description="Build Llama-family foundation models end to end.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)
    for name, (help_text, add, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lm-eval"] and argv[1:2] not in (["-h"], ["--help"]):
        # lm-eval parses its own options (argparse.REMAINDER would stop at the first --flag)
        args = argparse.Namespace(command="lm-eval", handler=_run_lm_eval, lm_eval_args=argv[1:])
    else:
        overrides = {}
        if argv[:1] == ["rm"] and (argv[1:2] or [""])[0] not in (*RM_ACTIONS, "-h", "--help"):
            argv.insert(1, "train")  # `herd rm CONFIG.toml` is `herd rm train CONFIG.toml`
        if argv[:1] == ["guard"] and (argv[1:2] or [""])[0] not in (*GUARD_ACTIONS, "-h", "--help"):
            argv.insert(1, "check")  # `herd guard CKPT ...` is `herd guard check CKPT ...`
        if argv[:1] == ["agent"] and (argv[1:2] or ["-"])[0] not in (
            *AGENT_ACTIONS,
            "-h",
            "--help",
        ):
            argv.insert(1, "chat")  # `herd agent CKPT ...` is `herd agent chat CKPT ...`
        if argv[:1] in (["train"], ["sft"], ["dpo"], ["ppo"]) or argv[:2] in (
            ["rm", "train"],
            ["guard", "train"],
        ):
            from herd.train.config import split_overrides

            try:
                argv, overrides = split_overrides(argv)
            except HerdError as e:
                sys.stderr.write(f"herd {argv[0]}: error: {e}\n")
                return 2
        args = parser.parse_args(argv)
        args.overrides = overrides
    if args.command is None:
        parser.print_help()
        return 2
    try:
        args.handler(args)
    except HerdError as e:
        sys.stderr.write(f"herd {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    return 0
