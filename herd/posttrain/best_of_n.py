"""`herd best-of-n CHECKPOINT --rm RM --prompts F --k 16 --out SFT.jsonl`: rejection sampling.

Llama 2 section 3.2.3 and Llama 3 section 4.2.2: sample K responses per prompt from the current
model, score them with the reward model, keep the best, and fine-tune on the kept responses (the
output is SFT data: one conversation per prompt, the best response as its last turn). Llama 2
found temperatures of 1.2-1.3 best for 10-100 samples of an RLHF-tuned model, and pooled the best
samples of all earlier rounds with the new ones (`--pool`); Llama 3 draws 10-30 samples and
shares the prompt's KV across them, which `herd.generate(..., num_samples=K)` does: the prompt is
prefilled once and its KV copied to the K rows (bench/best_of_n.py measures what that saves).

With a safety reward model too (`--safety-rm`), the reward combines as in Llama 2 section 3.2.2:
R_c = R_s if the prompt is a safety prompt (`"safety": true` on its row) or R_s < 0.15, else R_h,
where R = sigmoid(score) puts each model's score in (0, 1). The kept response maximises R_c.

Prompts: JSONL or Parquet rows (or a folder of them, or a Hugging Face dataset) with `messages`,
a conversation whose last turn is the user's, or `prompt`, a string (one user turn); optionally
`safety`. Each output row is {"messages": [..., {"role": "assistant", "content": BEST}],
"reward": R_c, "scores": {"helpful": raw, "safety": raw}, "k": K, "source": "sample" | "pool"}.

Resumable: rows go to OUT.partial as each prompt finishes (a marker for a prompt whose every
sample was empty, which is skipped), and a rerun with the same arguments continues after the
last whole row (prompt i samples with seed + i, so a resumed run writes what
an uninterrupted one would); OUT appears, renamed from the partial file, when every prompt is done.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from herd.errors import HerdError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from herd import options

    p.add_argument("checkpoint", metavar="CHECKPOINT", help="the policy to sample from")
    p.add_argument("--rm", required=True, metavar="RM", help="reward model checkpoint (`herd rm`)")
    p.add_argument(
        "--safety-rm",
        metavar="RM",
        help="a second, safety reward model: the kept response maximises Llama 2's combined "
        "reward (a safety prompt, or a safety score below 0.15, is judged by safety alone)",
    )
    p.add_argument(
        "--prompts",
        required=True,
        metavar="F",
        help='prompts: JSONL/Parquet rows {"messages": [...ending in a user turn]} or '
        '{"prompt": "text"}, optionally "safety": true; a folder of them or a Hugging Face dataset',
    )
    p.add_argument("--out", required=True, metavar="F", help="the SFT data written (JSONL)")
    p.add_argument("--k", type=options.positive_int, default=16, help="samples per prompt")
    p.add_argument(
        "--temperature",
        type=float,
        default=1.2,
        help="sampling temperature (Llama 2 found 1.2-1.3 best for 10-100 samples)",
    )
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    p.add_argument(
        "--max-new-tokens", type=options.positive_int, default=256, help="tokens per response"
    )
    p.add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="F",
        help="an earlier round's output (repeatable): its response for the same prompt joins the "
        "candidates, rescored by the current reward model(s)",
    )
    p.add_argument("--seed", type=int, default=0, help="prompt i samples with seed + i")
    p.add_argument(
        "--score-batch", type=options.positive_int, default=8, help="responses scored per forward"
    )
    p.add_argument("--split", default="train", help="split of a Hugging Face dataset")
    options.add_device(p)
    options.add_threads(p, "sampling and scoring")


def read_prompts(source: str, chat_format: str, split: str = "train") -> list[dict]:
    """[{"messages", "safety"}] of every prompt row; HerdError naming the first bad row."""
    from herd.data.chat_data import check_messages, read_rows

    prompts = []
    for where, row in read_rows(source, split):
        try:
            if isinstance(row, Exception):
                raise ValueError(str(row))
            if not isinstance(row, dict) or ("messages" in row) == ("prompt" in row):
                raise ValueError("expected an object with either 'messages' or 'prompt'")
            if "prompt" in row:
                if not isinstance(row["prompt"], str) or not row["prompt"].strip():
                    raise ValueError("'prompt' must be a non-empty string")
                messages = [{"role": "user", "content": row["prompt"]}]
            else:
                messages = check_messages(row["messages"], chat_format)
            if messages[-1]["role"] != "user":
                raise ValueError(f"the last message is {messages[-1]['role']!r}, expected 'user'")
            safety = row.get("safety", False)
            if not isinstance(safety, bool):
                raise ValueError("'safety' must be true or false")
        except ValueError as e:
            raise HerdError(f"{where}: {e}") from None
        prompts.append({"messages": messages, "safety": safety})
    if not prompts:
        raise HerdError(f"{source}: no prompts")
    return prompts


def prompt_key(messages: list[dict]) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def read_pool(paths: list[str]) -> dict[str, list[str]]:
    """prompt key -> the responses earlier rounds kept for it."""
    pool: dict[str, list[str]] = {}
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise HerdError(f"--pool {path}: cannot read it ({e.strerror})") from None
        for number, line in enumerate(lines, start=1):
            try:
                messages = json.loads(line)["messages"]
                reply = messages[-1]
                if reply["role"] != "assistant":
                    raise ValueError
            except (ValueError, KeyError, TypeError, IndexError):
                raise HerdError(
                    f"{path}:{number}: expected a best-of-n row whose last message is the "
                    "assistant's"
                ) from None
            pool.setdefault(prompt_key(messages[:-1]), []).append(reply["content"])
    return pool


def combined_rewards(
    helpful: list[float], safety: list[float] | None, safety_prompt: bool
) -> list[float]:
    """Each candidate's reward in (0, 1): sigmoid of the helpfulness score, or Llama 2's R_c
    (herd.posttrain.ppo.combine_rewards); -inf for an empty reply (scored -inf), never kept."""
    import torch

    from herd.posttrain.ppo import combine_rewards

    h = torch.tensor(helpful, dtype=torch.float64)
    out = torch.sigmoid(h)
    if safety is not None:
        r_s = torch.sigmoid(torch.tensor(safety, dtype=torch.float64))
        out = combine_rewards(out, r_s, torch.full_like(h, safety_prompt, dtype=torch.bool))
    return out.masked_fill(h == -math.inf, -math.inf).tolist()


def sample_responses(
    model,
    tok,
    messages: list[dict],
    k: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
) -> list[str]:
    """K responses to `messages`, sampled from one shared prefill, decoded without their stop
    token and stripped."""
    import herd
    from herd.tokenizer.chat import encode_dialog

    ids = encode_dialog(tok, messages, add_generation_prompt=True).ids
    room = model.config.max_seq_len - len(ids)
    if room < 1:
        raise HerdError(
            f"a prompt of {len(ids)} tokens leaves no room in the model's context of "
            f"{model.config.max_seq_len}"
        )
    stop = set(tok.stop_ids)
    rows = herd.generate(
        model,
        ids,
        min(max_new_tokens, room),
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop_ids=sorted(stop),
        num_samples=k,
    )
    texts = []
    for row in rows:
        end = next((i for i, t in enumerate(row) if t in stop), len(row))
        texts.append(tok.decode(row[:end], skip_special=True).strip())
    return texts


def score_responses(reward, messages: list[dict], responses: list[str], batch: int) -> list[float]:
    """The reward model's raw score of each response as the assistant's reply to `messages`;
    -inf for an empty response (the model ended its turn at once), which is never kept."""
    from herd.posttrain.reward import conversation_ids, reward_pad_id, score_sequences

    model, tok = reward
    scored = [i for i, r in enumerate(responses) if r]
    seqs = [conversation_ids(tok, messages, responses[i]) for i in scored]
    scores = [-math.inf] * len(responses)
    if seqs:
        values = score_sequences(model, seqs, batch, reward_pad_id(tok))
        for i, value in zip(scored, values, strict=True):
            scores[i] = float(value)
    return scores


def _resume(partial: Path) -> int:
    """Whole rows already in the partial file (a torn last line is cut off)."""
    if not partial.exists():
        return 0
    data = partial.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with partial.open("r+b") as f:
            f.truncate(len(whole))
    return whole.count(b"\n")


def run_best_of_n(args: argparse.Namespace) -> None:
    import torch
    from tqdm import tqdm

    from herd.atomic_files import write_file_atomically
    from herd.checkpoint.loading import load_for_command
    from herd.data.chat_data import require_chat_format
    from herd.posttrain.reward import load_reward_model

    out = Path(args.out)
    if out.exists():
        raise HerdError(f"--out {out}: already exists (remove it or choose another name)")
    if args.temperature <= 0:
        raise HerdError(f"--temperature {args.temperature}: expected > 0 (greedy gives K copies)")
    if not 0 < args.top_p <= 1:
        raise HerdError(f"--top-p {args.top_p}: expected a value in (0, 1]")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, _ = load_for_command(
        args.checkpoint, args.device, args.dtype, tokenizer_needed="to format prompts"
    )
    model.eval()
    prompts = read_prompts(args.prompts, require_chat_format(tok), args.split)
    pool = read_pool(args.pool)
    helpful = load_reward_model(args.rm, args.device, args.dtype)
    safety = load_reward_model(args.safety_rm, args.device, args.dtype) if args.safety_rm else None

    partial = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _resume(partial)
    skipped = partial.read_text(encoding="utf-8").count('{"skipped"') if done else 0
    if done > len(prompts):
        raise HerdError(f"{partial}: {done} rows for {len(prompts)} prompts (another run's file?)")
    if done:
        print(f"resuming after {done} of {len(prompts)} prompts", file=sys.stderr)
    with partial.open("a", encoding="utf-8") as f:
        for i in tqdm(range(done, len(prompts)), initial=done, total=len(prompts), unit="prompt"):
            p = prompts[i]
            responses = sample_responses(
                model, tok, p["messages"], args.k, args.max_new_tokens, args.temperature,
                args.top_p, args.seed + i,
            )  # fmt: skip
            sources = ["sample"] * len(responses)
            for earlier in pool.get(prompt_key(p["messages"]), []):
                responses.append(earlier)
                sources.append("pool")
            h = score_responses(helpful, p["messages"], responses, args.score_batch)
            s = (
                score_responses(safety, p["messages"], responses, args.score_batch)
                if safety
                else None
            )
            rewards = combined_rewards(h, s, p["safety"])
            best = max(range(len(responses)), key=rewards.__getitem__)
            if rewards[best] == -math.inf:
                skipped += 1  # every sample was empty: nothing to keep
                f.write(json.dumps({"skipped": prompt_key(p["messages"])}) + "\n")
                continue
            scores = {"helpful": h[best]} | ({"safety": s[best]} if s else {})
            row = {
                "messages": [*p["messages"], {"role": "assistant", "content": responses[best]}],
                "reward": rewards[best],
                "scores": scores,
                "k": args.k,
                "source": sources[best],
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
        os.fsync(f.fileno())
    # The partial file has a line per prompt (so a resume knows where it is); OUT only the kept.
    lines = partial.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if not line.startswith('{"skipped"')]
    write_file_atomically(out, lambda w: w.write("".join(k + "\n" for k in kept).encode()))
    partial.unlink()
    note = f" ({len(lines) - len(kept)} prompts skipped: every sample empty)" if skipped else ""
    print(
        f"wrote {out}: the best of {args.k} samples for {len(kept)} prompts{note}", file=sys.stderr
    )
