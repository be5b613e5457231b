"""experiments/post_training.py end to end in its --quick form: pretraining, SFT on answers of
which a share are the tasks' slips, DPO with alpha 0 and 0.2 on pairs sampled from the SFT model,
and LoRA SFT; every checkpoint scored on held-out and training prompts, the DPO runs' metrics read
back; a rerun reuses the runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# the experiment's folder, as when it runs as a script
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))

# the default start, the model pretrained on the prose (--starts random_init adds another)
ARGS = ["--quick", "--quiet", "--threads", "2", "--out"]
STAGES = ("sft", "sft+dpo_a0", "sft+dpo_a0.2", "lora_sft")
MODELS = tuple(f"{s}{t}" for s in ("pretrained",) for t in ("", *(f"+{x}" for x in STAGES)))


@pytest.fixture(scope="module")
def experiment():
    import post_training

    return post_training


@pytest.fixture(scope="module")
def quick_run(experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("post_training")
    summary = experiment.main([*ARGS, str(out)])
    return out, summary


def test_quick_run_reports_every_model_and_task(experiment, quick_run):
    out, _ = quick_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["stages"] == ["sft", "dpo_a0", "dpo_a0.2", "lora_sft"]
    assert set(saved["results"]) == set(MODELS)
    for name, r in saved["results"].items():
        assert Path(r["checkpoint"]).is_dir(), name
        for split in ("held_out", "train"):
            scores = r["scores"][split]
            assert set(scores) == {*experiment.TASKS, "overall"}
            for task in experiment.TASKS:
                assert scores[task]["n"] == 6
                assert scores[task]["examples"][0]["prompt"]
            for key in ("exact_match", "eot_share"):
                assert 0.0 <= scores["overall"][key] <= 1.0, (name, split, key)
    # the pretrained model never ends its turn: its prose has no <|eot_id|>
    assert saved["results"]["pretrained"]["scores"]["held_out"]["overall"]["eot_share"] == 0.0
    for name in MODELS:
        assert saved["results"][name]["train_seconds"] > 0, name
        for split in ("held_out", "train"):
            assert (
                0.0 <= saved["results"][name]["scores"][split]["overall"]["sampled_accuracy"] <= 1
            )
    summary_md = (out / "summary.md").read_text()
    assert "| pretrained+sft |" in summary_md and "| pretrained+lora_sft |" in summary_md
    assert "full minus LoRA" in summary_md
    # the LoRA run's checkpoint holds adapters only (evaluation merged them onto the start)
    lora = Path(saved["results"]["pretrained+lora_sft"]["checkpoint"])
    assert (lora / "adapter_config.json").is_file()
    # each DPO run's metrics: held-out pairs evaluated, logps first and last, the start's ranking
    for start in ("pretrained",):
        for alpha in ("0", "0.2"):
            name = f"{start}+sft+dpo_a{alpha}"
            d = saved["results"][name]["dpo"]
            assert f"| {name} |" in summary_md
            assert d["val_pairs"] > 0 and 0.0 <= d["start_prefers_chosen"] <= 1.0
            assert d["val"] and all(0.0 <= v["accuracies"] <= 1.0 for v in d["val"])
            assert d["log_steps"][0] < d["log_steps"][1]
            for key in ("logps_chosen_first", "logps_chosen_last", "logps_rejected_last"):
                assert d[key] < 0, (name, key)
            config = (out / name / "config.toml").read_text()
            assert f"alpha = {float(alpha)}" in config, name
    # the pairs, sampled from the SFT model: distinct prompts on training items, chosen the
    # correct answer, rejected a wrong reply of the model's
    counts = json.loads((out / "pretrained+sft-pairs.json").read_text())
    pairs = [json.loads(x) for x in (out / "pretrained+sft-pairs.jsonl").read_text().splitlines()]
    assert counts["prompts"] == experiment.QUICK["dpo_prompts"]
    assert 0 < len(pairs) == counts["pairs"] <= counts["prompts"]
    assert len({p["prompt"][0]["content"] for p in pairs}) == len(pairs)
    for p in pairs:
        question = p["prompt"][0]["content"]
        chosen, rejected = p["chosen"][0]["content"], p["rejected"][0]["content"]
        if question.startswith("What is"):
            a, b = question[len("What is ") : -1].split(" plus ")
            right = str(int(a) + int(b))
        elif question.startswith("Reverse"):
            right = question.split()[-1][:-1][::-1]
        else:
            right = question.split()[1].upper()
        assert chosen == right != rejected and rejected
    # the SFT set is the chat format's rows, and no held-out item is in any training text
    rows = [json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()]
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]
    # a share of the answers are the tasks' slips (a sum one too high, the word as it was)
    slips = 0
    for r in rows:
        question, answer = (m["content"] for m in r["messages"])
        if question.startswith("What is"):
            a, b = question[len("What is ") : -1].split(" plus ")
            slips += answer == str(int(a) + int(b) + 1)
        else:
            slips += answer == question.split()[-1 if question.startswith("Reverse") else 1].strip(
                "."
            )
    assert 0.1 < slips / len(rows) < 0.5
    prose = " ".join(p.read_text() for p in (out / "pretrain_corpus").iterdir())
    prompts = {m["content"] for r in rows for m in r["messages"] if m["role"] == "user"}
    held = saved["results"]["pretrained"]["scores"]["held_out"]
    for task in experiment.TASKS:
        for example in held[task]["examples"]:
            assert example["prompt"] not in prompts
            answer = example["answer"]
            word = {"reverse": answer[::-1], "upper": answer.lower()}.get(task)
            if word is not None:  # the prose says "The word W reversed is ..." of training words
                assert f"The word {word} " not in prose


def test_rerun_reuses_finished_runs(experiment, quick_run, capsys):
    out, summary = quick_run
    again = experiment.main([*ARGS, str(out)])
    assert capsys.readouterr().out.count("reusing the finished") == len(STAGES) + 1  # + pretraining
    for name in MODELS:
        assert again["results"][name]["scores"] == summary["results"][name]["scores"]
