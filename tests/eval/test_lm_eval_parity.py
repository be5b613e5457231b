"""Parity with lm-evaluation-harness: herd's Belebele letter scoring picks the same answer as
lm-eval's own `belebele` task run through its Hugging Face backend on the same weights, with
log-likelihoods within 1e-4; and lm-eval driving herd through the "herd" model gives the same."""

from __future__ import annotations

import json
import os

import lm_eval
import pytest
import torch
from lm_eval.tasks._yaml_loader import load_yaml

import herd
from herd.checkpoint.convert import convert
from herd.eval.mc_data import load_items
from herd.eval.multiple_choice import evaluate_items
from tests.eval.fixtures import PASSAGES, belebele_rows, tiny_checkpoint


def _task(path):
    """lm-eval's belebele task, unchanged except that it reads a local JSONL file."""
    template = os.path.join(
        os.path.dirname(lm_eval.__file__), "tasks/belebele/_default_template_yaml"
    )
    config = load_yaml(template, resolve_func=True)
    return {
        **config,
        "task": "belebele_local",
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "test_split": "test",
        "fewshot_split": "test",
    }


def _lm_eval_scores(result) -> dict[str, list[float]]:
    out = {}
    for sample in result["samples"]["belebele_local"]:
        doc = sample["doc"]
        key = f"{doc['dialect']}/{doc['link']}#{doc['question_number']}"
        out[key] = [float(r[0]) for r in sample["filtered_resps"]]
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    checkpoint = tiny_checkpoint(root)
    rows = [r for lang in PASSAGES for r in belebele_rows(lang)]
    data = root / "belebele.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    hf_dir = convert(checkpoint, root / "hf", dst_format="hf")
    return checkpoint, data, hf_dir


def _hf_lm(checkpoint, hf_dir, add_bos_token: bool = True):
    """lm-eval's HF model (HFLM) on the HF export of `checkpoint`, with its tokenizer."""
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = herd.load_tokenizer(checkpoint)
    # The export's own tokenizer files (herd convert --to hf), as a user's `lm_eval --model hf`
    # loads them: BOS from the post-processor, as Meta's HF Llama folders do.
    hf_tok = AutoTokenizer.from_pretrained(hf_dir)
    hf_model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    # the exported config carries the tokenizer's own special ids, not Llama 2's 1 / 2
    assert hf_model.config.bos_token_id == tokenizer.bos_id
    eos = hf_model.config.eos_token_id
    assert (eos if isinstance(eos, list) else [eos]) == tokenizer.stop_ids
    return HFLM(pretrained=hf_model, tokenizer=hf_tok, batch_size=4, add_bos_token=add_bos_token)


def test_letter_scoring_matches_lm_eval_hf_backend(setup):
    checkpoint, data, hf_dir = setup
    tokenizer = herd.load_tokenizer(checkpoint)
    lm = _hf_lm(checkpoint, hf_dir)
    reference = _lm_eval_scores(
        lm_eval.simple_evaluate(
            model=lm, tasks=[_task(data)], num_fewshot=0, log_samples=True, bootstrap_iters=0
        )
    )

    model = herd.load(checkpoint)
    results = evaluate_items(model, tokenizer, load_items(data), batch_size=3, show_progress=False)
    assert len(results) == len(reference) == 16
    for r in results:
        expected = reference[r.item.uid]
        assert r.logprobs == pytest.approx(expected, abs=1e-4), r.item.uid
        assert r.choice == max(range(4), key=lambda k: expected[k])


def test_lm_eval_runs_herd_models(setup):
    import herd.eval.lm_eval_backend

    checkpoint, data, _ = setup
    via_herd = _lm_eval_scores(
        lm_eval.simple_evaluate(
            model="herd",
            model_args=f"checkpoint={checkpoint},device=cpu",
            tasks=[_task(data)],
            num_fewshot=0,
            log_samples=True,
            bootstrap_iters=0,
        )
    )
    tokenizer = herd.load_tokenizer(checkpoint)
    direct = evaluate_items(herd.load(checkpoint), tokenizer, load_items(data), show_progress=False)
    for r in direct:
        assert via_herd[r.item.uid] == pytest.approx(r.logprobs, abs=1e-4)

    lm = lm_eval.api.registry.get_model("herd")(checkpoint=str(checkpoint), device="cpu")
    from lm_eval.api.instance import Instance

    text = "P: Le train pour Lyon part à huit heures depuis la gare centrale."
    [rolling] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    [(whole, _)] = lm.loglikelihood([Instance("loglikelihood", {}, ("", text), 0)])
    assert rolling == pytest.approx(whole, abs=1e-4)  # both score the text after BOS
    [generated] = lm.generate_until(
        [
            Instance(
                "generate_until",
                {},
                ("Q: Où va le train ?", {"until": ["\n"], "max_gen_toks": 8}),
                0,
            )
        ]
    )
    assert isinstance(generated, str) and "\n" not in generated


# Contexts ending in every kind of trailing whitespace: lm-eval moves all of it (str.rstrip())
# into the continuation before encoding, which changes the continuation's tokens.
ENDINGS = ["", " ", "\n", "\t", "\n\n", " \n"]
CONTINUATIONS = ["A", " B", "Lyon", " la gare centrale.", "Answer: C"]


def _instances(kind: str, args: list[tuple]):
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


@pytest.fixture(scope="module")
def pair(setup):
    """herd's bridge and lm-eval's HF model (add_bos_token=True) on the same weights."""
    import herd.eval.lm_eval_backend  # noqa: F401 - registers "herd"

    checkpoint, _, hf_dir = setup
    ours = lm_eval.api.registry.get_model("herd")(checkpoint=str(checkpoint), device="cpu")
    return ours, _hf_lm(checkpoint, hf_dir)


@pytest.mark.parametrize("ending", ENDINGS, ids=repr)
def test_loglikelihood_matches_hf_model_whatever_the_context_ends_with(pair, ending):
    ours, reference = pair
    context = "P: Le train pour Lyon part à huit heures.\nQ: Où va le train ?" + ending
    requests = _instances("loglikelihood", [(context, c) for c in CONTINUATIONS])
    got, expected = ours.loglikelihood(requests), reference.loglikelihood(requests)
    for c, (logprob, greedy), (want, want_greedy) in zip(CONTINUATIONS, got, expected, strict=True):
        assert logprob == pytest.approx(want, abs=1e-4), (ending, c)
        assert greedy == want_greedy, (ending, c)


def test_loglikelihood_of_an_empty_context_matches_hf_model(pair):
    ours, reference = pair
    requests = _instances("loglikelihood", [("", c) for c in CONTINUATIONS])
    got, expected = ours.loglikelihood(requests), reference.loglikelihood(requests)
    assert [g[0] for g in got] == pytest.approx([e[0] for e in expected], abs=1e-4)


def test_loglikelihood_rolling_matches_hf_model_across_windows(setup, pair):
    """Texts longer than the model's 256 positions take several rolling windows. herd scores a
    text after one BOS, which is lm-eval's HF model with add_bos_token=False; with True, that
    model also scores a second BOS (a token of the text to it) after the prefix BOS."""
    checkpoint, _, hf_dir = setup
    ours, _ = pair
    short = "P: Le train pour Lyon part à huit heures depuis la gare centrale."
    long = " ".join(p for passages in PASSAGES.values() for p, _ in passages) * 4
    assert len(ours.tokenizer.encode(long)) > 2 * ours.limit
    requests = _instances("loglikelihood_rolling", [(short,), (long,), ("\n\t x \n",)])
    reference = _hf_lm(checkpoint, hf_dir, add_bos_token=False)
    got, expected = ours.loglikelihood_rolling(requests), reference.loglikelihood_rolling(requests)
    assert got == pytest.approx(expected, abs=1e-3)


def test_generate_until_matches_hf_model(pair):
    ours, reference = pair
    prompts = ["Q: Où va le train ?\nA:", "P: Зимой в этом городе\n", "Answer:\t"]
    free = _instances("generate_until", [(p, {"until": [], "max_gen_toks": 12}) for p in prompts])
    expected = reference.generate_until(free)
    assert ours.generate_until(free) == expected
    # a stop string taken from the middle of each free run, so the cut happens
    stops = [text[len(text) // 2 : len(text) // 2 + 2] or "\n" for text in expected]
    cut = _instances(
        "generate_until",
        [(p, {"until": [s], "max_gen_toks": 12}) for p, s in zip(prompts, stops, strict=True)],
    )
    expected_cut = reference.generate_until(cut)
    assert any(len(a) < len(b) for a, b in zip(expected_cut, expected, strict=True))
    assert ours.generate_until(cut) == expected_cut
