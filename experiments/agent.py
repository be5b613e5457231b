"""A BlenderBot 3-style agent at toy scale (issue 24's study): does one small model, fine-tuned on
module data this project generates, answer questions whose answers are only in its search index
more often with search than without, and recall what a partner said sessions earlier, after a
restart, more often with long-term memory than without? How accurate are its module decisions?

BB3 (Shuster et al. 2022, arXiv 2208.03188) runs one model under a prompt per module: decide to
search and to recall, write a query and notes, pick knowledge from passages, notes or the
conversation, then reply with it. This script runs herd's agent (herd/agent/agent.py) on a model
trained from scratch on those modules' prompts, on CPU:

1. A world (experiments/agent_world.py): invented entities (towns, rivers, inventors, mountains,
   bands) with 1-3 facts each whose values are common words ("Dalpe holds a fair every
   Tuesday."), one document each in a BM25 index (`herd index build`'s code), distractor
   documents, and partners who state facts about themselves. Held-out entities and partners
   never occur in training text: which value a held-out entity has is only in the index, and a
   held-out partner's facts only in what they said in an earlier session.
2. Rows for every module (search and memory decisions, query, memory notes, knowledge from
   search, memory and the conversation, the response with and without Llama 3.1 tool prompts,
   code-interpreter calls), built with the agent's own prompt builders on simulated turns.
3. A byte-level BPE (herd.vocab.bpe) whose merges cover the prompts' English but not the
   invented names (they stay letters and common pairs, as held-out names must), and a random
   dim-128, 2-layer model; `herd sft`'s code (herd/posttrain/sft.py on the trainer) on the rows,
   5,000 steps at lr 3e-3. Why this shape: every knowledge module copies words out of its
   prompt, and a small model only does that once it has formed induction heads. In the time
   this study has on two cores, a dim-160, 4-layer model (1,200 steps) learnt every decision
   and format but copied nothing; two layers at a third of the cost per step, for four times
   the steps, copy. Why entity values are common words (agent_world.KINDS): with invented
   values (names, years: several BPE pieces each) this model copied the value out of the passage
   for 3% of held-out questions; a one-token value it copies for 94%, so the study measures the
   agent's search path rather than the toy model's spelling.
4. On held-out entities and partners, through `Agent.respond` (greedy):
   - search: the answer in the reply, with the world's index vs with no search backend;
   - memory: session one, the partner states 2-3 facts over a few turns and the agent writes
     notes to a SQLite `MemoryStore`; the store is closed and reopened as a new session (a
     restart), and each fact is asked about: the answer in the reply, with memory vs without;
   - the code interpreter: held-out sums and products, with a toolbox (real sandbox) vs without;
   - module accuracy on held-out labelled turns: the two decisions, the query (the index's first
     hit is the entity's document), search knowledge (holds the answer), memory knowledge (the
     right note), the memory generator (the right note, or none) and the entity module.

    .venv/bin/python experiments/agent.py                     # ~15 minutes on 2 CPU cores
    .venv/bin/python experiments/agent.py --quick             # a smoke test, seconds

Results on stdout, in OUT/summary.json, OUT/summary.md and OUT/agent.png; example turns with
their module traces in OUT/examples.jsonl. A finished run in OUT is reused (the evaluation is
rerun). Measured: docs/agent.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as experiments/post_training.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

import agent_data  # the sibling generators: rows, turns, world
import agent_turns
import agent_world
import torch
from study_cli import parse_study, study_parser
from tqdm import tqdm

from herd.agent import modules as m
from herd.agent.agent import MODULE_TOKENS, Agent, AgentConfig
from herd.agent.llm import LocalChat
from herd.agent.memory import MemoryStore, squash_text
from herd.agent.search import SearchIndex, build_index
from herd.agent.toolbox import Toolbox
from herd.checkpoint.convert import load
from herd.checkpoint.io import save_herd_folder
from herd.errors import HerdError
from herd.model.families import build_model
from herd.posttrain.sft import SFT_DEFAULTS, load_stage_config, sft_data
from herd.tokenizer import load_tokenizer
from herd.train.checkpoint import list_checkpoints
from herd.train.trainer import Trainer
from herd.vocab.bpe import train_bpe

# Rows per module (experiments/agent_data.py module_rows).
ROWS = {"search_decision": 1600, "memory_decision": 1000, "search_query": 4000,
        "memory_generator": 3000, "search_knowledge": 5000, "memory_knowledge": 2000,
        "contextual_knowledge": 1600, "response": 6000, "code_interpreter": 2400}  # fmt: skip
WORLD = {"entities": 6000, "held_out_entities": 60, "distractors": 100, "ghosts": 300,
         "partners": 4000, "held_out_partners": 40}  # fmt: skip
# --quick: a smoke test of every step in about a minute; its numbers mean nothing.
QUICK = {"rows_scale": 0.03, "world_scale": 0.1, "dim": 64, "n_layers": 2, "vocab": 600,
         "steps": 8, "questions": 3, "partners": 2, "turns": 6, "arithmetic": 2,
         "response_tokens": 24}  # fmt: skip
TRAINING = ("seed", "rows_scale", "world_scale", "dim", "n_layers", "vocab", "seq_len",
            "batch_size", "steps", "lr")  # the settings a finished run is reused for  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def scaled(sizes: dict[str, int], scale: float, least: int = 1) -> dict[str, int]:
    return {k: max(least, round(v * scale)) for k, v in sizes.items()}


# --- 1-3: world, rows, tokenizer, model, training ---------------------------------------------


def prepare(args, out: Path) -> tuple[agent_world.World, Path, dict, Path, Path]:
    """The world, the training rows (OUT/rows.jsonl) and their count per module, the index of the
    world's documents and the random starting model with its BPE; what exists already is
    reused."""
    settings = {k: getattr(args, k) for k in TRAINING}
    saved = out / "settings.json"
    if saved.is_file() and json.loads(saved.read_text()) != settings:
        raise HerdError(
            f"{out}: holds a run with other settings ({saved}); pass another --out or remove it"
        )
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(settings, indent=1) + "\n")
    world = agent_world.make_world(args.seed, **scaled(WORLD, args.world_scale, least=2))
    rows = agent_data.module_rows(world, scaled(ROWS, args.rows_scale, least=4), args.seed)
    leaks = agent_data.held_out_leaks(world, rows)
    if leaks:
        raise AssertionError(f"held-out names in training rows: {leaks[:5]}")
    data = write_jsonl(out / "rows.jsonl", rows)
    docs = world.write_documents(out / "docs" / "docs.jsonl")
    index = out / "index"
    if not (index / "index.json").is_file():
        build_index([docs], index, show_progress=False, overwrite=True)
    start = out / "start"
    if not (start / "config.json").is_file():
        (out / "corpus.txt").write_text(agent_data.tokenizer_corpus(rows, world))
        tok_dir = train_bpe(
            [out / "corpus.txt"], args.vocab, out / "tokenizer", overwrite=True, show_progress=False
        )
        tok = load_tokenizer(tok_dir)
        import herd

        config = herd.ModelConfig(
            dim=args.dim, n_layers=args.n_layers, n_heads=4, n_kv_heads=4, ffn_dim=3 * args.dim,
            vocab_size=tok.vocab_size, max_seq_len=1024, rope_theta=10000.0,
        )  # fmt: skip
        model = build_model(config, seed=args.seed)
        save_herd_folder(config, model.state_dict(), start, tokenizer=tok.files(), overwrite=True)
    counts = {k: sum(r["module"] == k for r in rows) for k in agent_data.MODULE_ROWS}
    return world, data, counts, index, start


def train(args, out: Path, start: Path, data: Path) -> tuple[Path, dict]:
    """`herd sft --model.checkpoint START --data.path ROWS ...` through its code; reused when
    finished."""
    run_dir = out / "run"
    final = run_dir / "checkpoints" / f"step-{args.steps:08d}"
    record = run_dir / "record.json"
    if final in list_checkpoints(run_dir / "checkpoints") and record.is_file():
        print(f"agent: reusing the finished run in {run_dir}")
        return final, json.loads(record.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = {
        "model.checkpoint": str(start), "data.path": str(data), "data.seq_len": str(args.seq_len),
        "data.batch_size": str(args.batch_size), "data.val_fraction": "0",
        "data.seed": str(args.seed), "train.seed": str(args.seed), "train.steps": str(args.steps),
        "train.device": "cpu", "train.dtype": "float32", "train.log_every": "25",
        "train.eval_every": str(args.steps), "train.checkpoint_every": str(args.steps),
        "train.keep_checkpoints": "1", "optim.lr": str(args.lr),
        "optim.warmup_steps": str(max(1, args.steps // 20)), "train.out": str(run_dir),
    }  # fmt: skip
    run = load_stage_config(None, overrides, SFT_DEFAULTS)
    began = time.perf_counter()
    last = Trainer(run, run_dir, data=sft_data(run)).fit(show_progress=not args.quiet)
    result = {"loss": last.get("loss"), "seconds": round(time.perf_counter() - began, 1),
              "tokens": args.steps * args.batch_size * args.seq_len}  # fmt: skip
    record.write_text(json.dumps(result) + "\n")
    return final, result


# --- 4: evaluation ---------------------------------------------------------------------------


def bar(items, desc: str, quiet: bool):
    return tqdm(items, desc=desc, leave=False, disable=quiet or None)


def share(hits: list[bool]) -> float:
    return sum(hits) / len(hits) if hits else 0.0


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


class Examples:
    """A few turns of each arm with their traces, for OUT/examples.jsonl."""

    def __init__(self, per_arm: int = 3) -> None:
        self.rows: list[dict] = []
        self.per_arm = per_arm
        self.counts: dict[str, int] = {}

    def add(self, arm: str, context: list[dict], turn, **extra) -> None:
        if self.counts.get(arm, 0) < self.per_arm:
            self.counts[arm] = self.counts.get(arm, 0) + 1
            self.rows.append({"arm": arm, "context": context, "reply": turn.reply, **extra,
                              "trace": turn.trace()})  # fmt: skip


def eval_search(chat, index, questions, config, examples, quiet) -> dict:
    """The answer in the reply, with the index and with no search backend."""
    arms = {"with_search": Agent(chat, search=index, config=config),
            "without_search": Agent(chat, config=config)}  # fmt: skip
    hits = {k: [] for k in arms}
    decided, found = [], []
    for q in bar(questions, "search", quiet):
        for arm, agent in arms.items():
            turn = agent.respond(user(q["question"]))
            hits[arm].append(agent_turns.answer_in(q["answer"], turn.reply))
            examples.add(arm, user(q["question"]), turn, answer=q["answer"])
            if arm == "with_search":
                decided.append(turn.decisions["search"])
                found.append(agent_turns.answer_in(q["answer"], turn.knowledge.get("search") or ""))
    return {**{k: share(v) for k, v in hits.items()}, "questions": len(questions),
            "decided_search": share(decided), "knowledge_with_answer": share(found)}  # fmt: skip


def eval_memory(chat, index, cases, config, folder: Path, examples, quiet) -> dict:
    """Session one writes notes; after a restart (the store reopened as a new session) each fact
    is asked about, with memory and without."""
    folder.mkdir(parents=True, exist_ok=True)
    hits: dict[str, list[bool]] = {"with_memory": [], "without_memory": []}
    stored, recalled = [], []
    plain = Agent(chat, search=index, config=config)
    for case in bar(cases, "memory", quiet):
        path = folder / f"{case['user']}.db"
        path.unlink(missing_ok=True)
        with MemoryStore(path, case["user"], session="one") as store:
            agent = Agent(chat, search=index, memory=store, config=config)
            context: list[dict] = []
            for text in case["session_one"]:
                context.append({"role": "user", "content": text})
                turn = agent.respond(context)
                context.append({"role": "assistant", "content": turn.reply or "..."})
            notes = {squash_text(e.text) for e in store.list_entries(case["user"])}
        for i, probe in enumerate(case["probes"]):
            stored.append(squash_text(probe["note"]) in notes)
            with MemoryStore(path, case["user"], session=f"two-{i}") as store:  # a restart
                turn = Agent(chat, search=index, memory=store, config=config).respond(
                    user(probe["question"])
                )
            hits["with_memory"].append(agent_turns.answer_in(probe["answer"], turn.reply))
            recalled.append(turn.decisions.get("memory", False))
            examples.add("with_memory", user(probe["question"]), turn, answer=probe["answer"],
                         session_one=context)  # fmt: skip
            turn = plain.respond(user(probe["question"]))
            hits["without_memory"].append(agent_turns.answer_in(probe["answer"], turn.reply))
            examples.add("without_memory", user(probe["question"]), turn, answer=probe["answer"])
    return {**{k: share(v) for k, v in hits.items()}, "probes": len(stored),
            "partners": len(cases), "gold_note_stored": share(stored),
            "decided_memory": share(recalled)}  # fmt: skip


def eval_code(chat, index, questions, config, examples, quiet) -> dict:
    """Held-out arithmetic: the answer in the reply, with a code interpreter and without."""
    arms = {"with_tools": Agent(chat, search=index, toolbox=Toolbox(search=index, code=True),
                                config=config),
            "without_tools": Agent(chat, search=index, config=config)}  # fmt: skip
    hits = {k: [] for k in arms}
    called = []
    for q in bar(questions, "code", quiet):
        for arm, agent in arms.items():
            turn = agent.respond(user(q["question"]))
            hits[arm].append(agent_turns.answer_in(q["answer"], turn.reply))
            examples.add(arm, user(q["question"]), turn, answer=q["answer"])
            if arm == "with_tools":
                called.append(any(t["name"] == "code_interpreter" for t in turn.tools))
    return {**{k: share(v) for k, v in hits.items()}, "questions": len(questions),
            "called_interpreter": share(called)}  # fmt: skip


def module_output(chat, name: str, messages: list[dict]) -> str:
    return chat.complete(messages, MODULE_TOKENS[name], 0.0).text


def eval_modules(chat, index, world, args, questions, cases, quiet) -> dict:
    """Each module alone on held-out labelled inputs (its prompt as the agent builds it)."""
    turns = agent_turns.decision_turns(world, args.turns, seed=args.seed + 1)
    out = {}
    rights = {"search": [], "do not search": []}
    for t in bar(turns["search"], "search decision", quiet):
        said = m.parse_search_decision(
            module_output(
                chat, "search_decision", m.build_search_decision_messages(user(t["text"]))
            )
        )
        rights["search" if t["search"] else "do not search"].append(said == t["search"])
    out["search_decision"] = {"accuracy": share([x for v in rights.values() for x in v]),
                              "turns": len(turns["search"]),
                              **{f"accuracy_{k.replace(' ', '_')}": share(v)
                                 for k, v in rights.items() if v}}  # fmt: skip
    rights = {"access memory": [], "do not access memory": []}
    for t in bar(turns["memory"], "memory decision", quiet):
        notes = [agent_turns.Note(x) for x in t["notes"]]
        messages = m.build_memory_decision_messages(user(t["text"]), notes)
        said = m.parse_memory_decision(module_output(chat, "memory_decision", messages))
        rights["access memory" if t["memory"] else "do not access memory"].append(
            said == t["memory"]
        )
    out["memory_decision"] = {"accuracy": share([x for v in rights.values() for x in v]),
                              "turns": len(turns["memory"]),
                              **{f"accuracy_{k.replace(' ', '_')}": share(v)
                                 for k, v in rights.items() if v}}  # fmt: skip
    query, knowledge = [], []
    for q in bar(questions[: args.turns], "query, knowledge", quiet):
        said = m.parse_search_query(
            module_output(chat, "search_query", m.build_search_query_messages(user(q["question"])))
        )
        hits = index.search(said, 1) if said else []
        query.append(bool(hits) and hits[0]["title"] == q["entity"])
        passages = index.search(q["query"], m.PASSAGES)
        messages = m.build_search_knowledge_messages(user(q["question"]), passages)
        said = m.parse_search_knowledge(module_output(chat, "search_knowledge", messages))
        knowledge.append(agent_turns.answer_in(q["answer"], said or ""))
    out["search_query"] = {"accuracy": share(query), "turns": len(query)}
    out["search_knowledge"] = {"accuracy": share(knowledge), "turns": len(knowledge)}
    notes_right, picks = [], []
    for case in bar(cases, "notes", quiet):
        gold = [agent_turns.Note(p["note"]) for p in case["probes"]]
        for p in case["probes"]:
            messages = m.build_memory_generator_messages(user(p["statement"]), "partner")
            said = m.parse_memory_generator(module_output(chat, "memory_generator", messages))
            notes_right.append(squash_text(said or "") == squash_text(p["note"]))
            messages = m.build_memory_generator_messages(user(p["question"]), "partner")
            said = m.parse_memory_generator(module_output(chat, "memory_generator", messages))
            notes_right.append(said is None)
            shown = agent_turns.retrieve(gold, p["question"])
            if any(n.text == p["note"] for n in shown):
                messages = m.build_memory_knowledge_messages(user(p["question"]), shown)
                said = m.parse_memory_knowledge(
                    module_output(chat, "memory_knowledge", messages), shown
                )
                picks.append(said is not None and said.text == p["note"])
    out["memory_generator"] = {"accuracy": share(notes_right), "turns": len(notes_right)}
    out["memory_knowledge"] = {"accuracy": share(picks), "turns": len(picks)}
    rng = random.Random(args.seed + 2)
    entity = []
    for i in bar(range(args.turns), "entity", quiet):
        if i % 2 == 0:  # a held-out chit-chat topic
            first = agent_turns.chitchat_turn(rng, held_out=True)
            said, reply, topic = first.text, first.replies[0], first.topic
        else:  # a held-out entity asked about earlier
            q = questions[i % len(questions)]
            said, topic = q["question"], q["entity"]
            reply = agent_turns.UNKNOWN[0].format(name=topic)
        dialogue = [*user(said), {"role": "assistant", "content": reply},
                    *user(agent_turns.greeting_turn(rng).text)]  # fmt: skip
        messages = m.build_contextual_knowledge_messages(dialogue)
        picked = m.parse_contextual_knowledge(
            module_output(chat, "contextual_knowledge", messages), dialogue
        )
        entity.append(picked is not None and squash_text(picked) == squash_text(topic))
    out["contextual_knowledge"] = {"accuracy": share(entity), "turns": len(entity)}
    return out


# --- reporting ---------------------------------------------------------------------------------


def report(s: dict) -> str:
    se, me, co = s["search"], s["memory"], s["code"]
    lines = [
        "| held-out task | with | without | n |",
        "|---|---:|---:|---:|",
        f"| answer only in the index (search) | {se['with_search']:.1%} | "
        f"{se['without_search']:.1%} | {se['questions']} |",
        f"| partner's fact after a restart (memory) | {me['with_memory']:.1%} | "
        f"{me['without_memory']:.1%} | {me['probes']} |",
        f"| arithmetic (code interpreter) | {co['with_tools']:.1%} | {co['without_tools']:.1%} | "
        f"{co['questions']} |",
        "",
        f"With search, the agent decided to search on {se['decided_search']:.1%} of the questions "
        f"and its search knowledge held the answer on {se['knowledge_with_answer']:.1%}. In "
        f"session one it stored the right note for {me['gold_note_stored']:.1%} of the facts; "
        f"after the restart it decided to use memory on {me['decided_memory']:.1%} of the "
        f"questions. With tools it called the code interpreter on {co['called_interpreter']:.1%}.",
        "",
        "| module (alone, held-out inputs) | accuracy | n |",
        "|---|---:|---:|",
    ]
    for name, r in s["modules"].items():
        extra = [f"{k[len('accuracy_'):].replace('_', ' ')} {v:.1%}"
                 for k, v in r.items() if k.startswith("accuracy_")]  # fmt: skip
        detail = f" ({', '.join(extra)})" if extra else ""
        lines.append(f"| {name} | {r['accuracy']:.1%}{detail} | {r['turns']} |")
    t = s["train"]
    lines += ["", f"Model: dim {s['settings']['dim']}, {s['settings']['n_layers']} layers, "
              f"{s['parameters']:,} parameters, BPE {s['vocab_size']}; {sum(s['rows'].values()):,} "
              f"module rows; `herd sft` {s['settings']['steps']} steps of "
              f"{s['settings']['batch_size']} x {s['settings']['seq_len']} tokens in "
              f"{t['seconds'] / 60:.1f} minutes (final loss {t['loss']:.3f}). "
              f"{s['minutes']:.1f} minutes in all."]  # fmt: skip
    return "\n".join(lines)


def plot(s: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 1.4]})
    groups = [("search", "with_search", "without_search"), ("memory", "with_memory", "without_memory"),
              ("code", "with_tools", "without_tools")]  # fmt: skip
    xs = range(len(groups))
    left.bar([x - 0.2 for x in xs], [s[g][w] for g, w, _ in groups], 0.4, label="with")
    left.bar([x + 0.2 for x in xs], [s[g][wo] for g, _, wo in groups], 0.4, label="without")
    left.set_xticks(list(xs), ["search\n(index)", "memory\n(after restart)", "code\ninterpreter"])
    left.set_ylim(0, 1)
    left.set_ylabel("held-out answers right")
    left.legend()
    names = list(s["modules"])
    right.barh(names[::-1], [s["modules"][n]["accuracy"] for n in names[::-1]], color="tab:green")
    right.set_xlim(0, 1)
    right.set_xlabel("module accuracy (held-out inputs)")
    fig.suptitle("A BB3-style agent, dim {} x {} layers, trained on generated module data".format(
        s["settings"]["dim"], s["settings"]["n_layers"]))  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the run ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = study_parser(__doc__, "runs/agent")
    p.add_argument("--seed", type=int, default=0, help="seed of the world, rows, model and order")
    p.add_argument("--rows-scale", type=float, default=1.0, help="times the rows per module")
    p.add_argument("--world-scale", type=float, default=1.0, help="times the world's sizes")
    p.add_argument("--dim", type=int, default=128, help="model width")
    p.add_argument("--n-layers", type=int, default=2, help="transformer layers")
    p.add_argument("--vocab", type=int, default=1500, help="BPE vocabulary size (at most)")
    p.add_argument("--seq-len", type=int, default=512, help="packed training row length")
    p.add_argument("--batch-size", type=int, default=8, help="rows per step")
    p.add_argument("--steps", type=int, default=5000, help="SFT steps")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--questions", type=int, default=80, help="held-out entity questions")
    p.add_argument("--partners", type=int, default=30, help="held-out partners (2-3 facts each)")
    p.add_argument("--turns", type=int, default=100, help="held-out inputs per module")
    p.add_argument("--arithmetic", type=int, default=30, help="held-out arithmetic questions")
    p.add_argument("--response-tokens", type=int, default=96, help="reply length limit")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parse_study(p, argv, QUICK)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    began = time.perf_counter()
    world, data, counts, index_dir, start = prepare(args, out)
    checkpoint, trained = train(args, out, start, data)

    model, tok = load(checkpoint), load_tokenizer(checkpoint)
    chat = LocalChat(model, tok)
    index = SearchIndex.load(index_dir)
    config = AgentConfig(response_tokens=args.response_tokens)
    questions = agent_turns.search_questions(world, args.questions, seed=args.seed + 3)
    cases = agent_turns.memory_cases(world, args.partners, seed=args.seed + 4)
    arithmetic = agent_turns.arithmetic_questions(args.arithmetic, seed=args.seed + 5)
    examples = Examples()
    evaluated = time.perf_counter()
    summary = {
        "question": "does a small model fine-tuned on generated BB3 module data answer held-out "
        "questions more often with search than without, and recall a partner's fact after a "
        "restart more often with memory than without? How accurate are its modules?",
        "settings": {k: v for k, v in vars(args).items() if k not in ("quiet", "threads", "out")},
        "rows": counts,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": tok.vocab_size,
        "train": trained,
    }  # fmt: skip
    with torch.inference_mode():
        summary["search"] = eval_search(chat, index, questions, config, examples, args.quiet)
        summary["memory"] = eval_memory(
            chat, index, cases, config, out / "memory", examples, args.quiet
        )
        summary["code"] = eval_code(chat, index, arithmetic, config, examples, args.quiet)
        summary["modules"] = eval_modules(chat, index, world, args, questions, cases, args.quiet)
    summary["eval_seconds"] = round(time.perf_counter() - evaluated, 1)
    summary["minutes"] = (time.perf_counter() - began) / 60
    text = report(summary)
    print("\n" + text)
    write_jsonl(out / "examples.jsonl", examples.rows)
    (out / "summary.md").write_text(text + "\n", "utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    plot(summary, out / "agent.png")
    print(f"\nwrote {out / 'summary.json'}, {out / 'summary.md'} and {out / 'agent.png'}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except HerdError as e:
        sys.exit(f"error: {e}")
