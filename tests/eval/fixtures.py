"""A small Belebele-format corpus written for the tests (five languages, four scripts) and a tiny
random model with a tokenizer trained on it."""

from __future__ import annotations

import json
from pathlib import Path

import herd
from herd.checkpoint.io import save_herd_folder
from herd.model.config import ModelConfig
from herd.vocab.bpe import train_bpe

# (language, passages); each passage is (text, [(question, answers, correct 1-4), ...])
PASSAGES = {
    "eng_Latn": [
        (
            "The river floods every spring, so the village keeps its boats on the hill.",
            [
                ("When does the river flood?", ["In spring", "In winter", "Never", "At night"], 1),
                (
                    "Where are the boats kept?",
                    ["In the river", "On the hill", "In a shed", "At sea"],
                    2,
                ),
            ],
        ),
        (
            "Maria planted tomatoes in May and picked the first ones in late July.",
            [
                ("What did Maria plant?", ["Beans", "Roses", "Tomatoes", "Corn"], 3),
                ("When did she pick the first ones?", ["June", "May", "August", "Late July"], 4),
            ],
        ),
        (
            "The library opens at nine and closes at five, except on Sundays.",
            [("When does the library open?", ["At nine", "At five", "At noon", "At ten"], 1)],
        ),
    ],
    "fra_Latn": [
        (
            "Le train pour Lyon part à huit heures depuis la gare centrale.",
            [
                ("Où va le train ?", ["À Paris", "À Lyon", "À Nice", "À Lille"], 2),
                (
                    "À quelle heure part-il ?",
                    ["Six heures", "Midi", "Huit heures", "Dix heures"],
                    3,
                ),
            ],
        ),
        (
            "Paul boit du thé le matin et du café l'après-midi.",
            [("Que boit Paul le matin ?", ["Du café", "Du lait", "De l'eau", "Du thé"], 4)],
        ),
    ],
    "rus_Cyrl": [
        (
            "Зимой в этом городе очень холодно, и дети катаются на санках.",
            [
                ("Какая погода зимой?", ["Очень холодно", "Жарко", "Тепло", "Дождливо"], 1),
                ("На чём катаются дети?", ["На лодках", "На санках", "На конях", "На машинах"], 2),
            ],
        ),
        (
            "Анна читает книгу каждый вечер перед сном.",
            [("Когда Анна читает?", ["Утром", "Днём", "Каждый вечер", "Никогда"], 3)],
        ),
    ],
    "zho_Hans": [
        (
            "这座山很高，山顶上常年有雪。",
            [
                ("山顶上有什么？", ["雪", "树", "湖", "房子"], 1),
                ("这座山怎么样？", ["很矮", "很高", "很小", "很热"], 2),
            ],
        ),
        (
            "小明每天骑自行车去学校。",
            [("小明怎么去学校？", ["走路", "坐车", "坐船", "骑自行车"], 4)],
        ),
    ],
    "arb_Arab": [
        (
            "يفتح السوق في الصباح الباكر ويغلق عند الظهر.",
            [
                ("متى يفتح السوق؟", ["في المساء", "في الصباح الباكر", "في الليل", "عند الظهر"], 2),
                ("متى يغلق السوق؟", ["عند الظهر", "في المساء", "في الصباح", "منتصف الليل"], 1),
            ],
        ),
    ],
}


def belebele_rows(language: str) -> list[dict]:
    rows = []
    for p, (passage, questions) in enumerate(PASSAGES[language]):
        for q, (question, answers, correct) in enumerate(questions, start=1):
            row = {
                "link": f"https://example.org/{language}/{p}",
                "question_number": q,
                "flores_passage": passage,
                "question": question,
                "correct_answer_num": str(correct),
                "dialect": language,
            }
            row.update({f"mc_answer{k}": a for k, a in enumerate(answers, start=1)})
            rows.append(row)
    return rows


def write_belebele(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for language in PASSAGES:
        lines = [json.dumps(r, ensure_ascii=False) for r in belebele_rows(language)]
        (folder / f"{language}.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    return folder


def tiny_checkpoint(root: Path, max_seq_len: int = 256) -> Path:
    """A random 2-layer model (GQA) with a byte-level BPE trained on the fixture texts."""
    corpus = root / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    text = "\n".join(
        f"P: {p}\nQ: {q}\nA: {a[0]}\nB: {a[1]}\nC: {a[2]}\nD: {a[3]}\nAnswer: A B C D"
        for passages in PASSAGES.values()
        for p, qs in passages
        for q, a, _ in qs
    )
    (corpus / "text.txt").write_text(text * 3, "utf-8")
    tok_dir = train_bpe([corpus], 400, root / "tok", show_progress=False)
    tokenizer = herd.load_tokenizer(tok_dir)
    config = ModelConfig(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=tokenizer.vocab_size,
        ffn_dim=128,
        max_seq_len=max_seq_len,
    )
    model = herd.build_model(config, seed=3)
    out = root / "ckpt"
    save_herd_folder(config, model.state_dict(), out, tokenizer.files(), overwrite=True)
    return out
