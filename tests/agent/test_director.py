"""herd/agent/director.py: the classifier's training positions (the reply's tokens, end-of-turn
included, in the chat format generation uses), its loss against a token-by-token computation,
decoding (gamma = 0 is `herd.generate`; a penalised token is avoided), learning a toy feedback
task that then steers decoding, and the saved head folder.

The toy task: a tiny model briefly trained on weather chats whose replies say "rainy" seven
times in ten and "sunny" otherwise; users like sunny replies (label 1) and dislike rainy ones (0).
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

import herd
from herd.agent.director import (
    DirectorHead,
    DirectorRow,
    director_batch,
    director_generate,
    director_loss,
    director_scores,
    load_director,
    save_director,
    sequence_goodness,
    train_director,
)
from herd.errors import HerdError
from herd.tokenizer.chat import encode_dialog
from herd.vocab.bpe import train_bpe

CITIES = ("Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Berlin", "Dublin", "Madrid",
          "Vienna", "Prague", "Quito")  # fmt: skip
TRAIN_CITIES, HELD_OUT_CITIES = CITIES[:8], CITIES[8:]
ASKS = ("What is the weather in {c}?", "How is {c} today?", "Tell me about the weather in {c}.")
REPLIES = ("It is {w} in {c} today.", "Expect {w} skies over {c}.", "{c} looks {w} this week.")


def weather_row(rng: random.Random, city: str, good: bool) -> DirectorRow:
    ask = rng.choice(ASKS).format(c=city)
    reply = rng.choice(REPLIES).format(w="sunny" if good else "rainy", c=city)
    return DirectorRow([{"role": "user", "content": ask}], reply, int(good))


def conversation(tok, row: DirectorRow) -> list[int]:
    messages = [*row.messages, {"role": "assistant", "content": row.reply}]
    return encode_dialog(tok, messages, add_generation_prompt=False).ids


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """dim-64 matrices: a second OpenMP thread costs more than it gives, and several times more
    when another process is busy on the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(tokenizer, model): the model trained 150 steps on the weather chats, 70% rainy."""
    root = tmp_path_factory.mktemp("director")
    texts = [a.format(c=c) + " " + r.format(w=w, c=c) for c in CITIES for a in ASKS
             for r in REPLIES for w in ("sunny", "rainy")]  # fmt: skip
    (root / "corpus.txt").write_text("\n".join(texts * 3))
    tok = herd.load_tokenizer(train_bpe([root / "corpus.txt"], 400, root / "tok", False))
    config = herd.ModelConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=tok.vocab_size,
        max_seq_len=256,
    )  # fmt: skip
    model = herd.build_model(config, seed=0)
    rng = random.Random(0)
    seqs = [conversation(tok, weather_row(rng, rng.choice(CITIES), rng.random() < 0.3))
            for _ in range(400)]  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        chunk = rng.sample(seqs, 16)
        ids = torch.zeros(16, max(map(len, chunk)), dtype=torch.long)
        targets = torch.full_like(ids, -100)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = torch.tensor(s)
            targets[i, : len(s) - 1] = torch.tensor(s[1:])
        loss = model(ids, targets=targets) / (targets != -100).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return tok, model.eval()


@pytest.fixture(scope="module")
def trained(toy):
    """(head, metrics, untouched): a head trained on 96 balanced rows of the first 8 cities."""
    tok, model = toy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = random.Random(1)
    rows = [weather_row(rng, rng.choice(TRAIN_CITIES), i % 2 == 0) for i in range(96)]
    head, metrics = train_director(model, tok, rows, steps=300, lr=1e-2, batch_size=8)
    after = model.state_dict()
    untouched = all(torch.equal(before[k], after[k]) for k in before) and all(
        p.grad is None for p in model.parameters()
    )
    return head, metrics, untouched


def prompt_ids(tok, ask: str) -> list[int]:
    return encode_dialog(tok, [{"role": "user", "content": ask}]).ids


def test_batch_is_prompt_then_reply_and_scores_exactly_the_reply_tokens(toy):
    tok, _ = toy
    eot = tok.special_tokens["<|eot_id|>"]
    rows = [
        DirectorRow([{"role": "user", "content": "How is Rome today?"}], "Rome looks sunny.", 1),
        DirectorRow(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is the weather in Oslo?"},
                {"role": "assistant", "content": "Expect rainy skies over Oslo."},
                {"role": "user", "content": "And in Lima?"},
            ],
            "It is sunny in Lima today.",
            0,
        ),
    ]
    batch = director_batch(tok, rows, max_len=256)
    assert batch.labels.tolist() == [1.0, 0.0]
    for r, row in enumerate(rows):
        prompt = encode_dialog(tok, row.messages, add_generation_prompt=True).ids
        reply = [*tok.encode(row.reply), eot]  # how chat.py writes an assistant message's body
        assert prompt + reply == conversation(tok, row)
        assert batch.ids[r, : len(prompt) + len(reply)].tolist() == prompt + reply
        # position t judges the token at t + 1: exactly the reply's tokens, end-of-turn included
        assert batch.targets[r][batch.scored[r]].tolist() == reply
        assert batch.scored[r].nonzero().flatten().tolist() == list(
            range(len(prompt) - 1, len(prompt) + len(reply) - 1)
        )
    # too long: the oldest prompt tokens go, the reply stays whole; no room for it is an error
    reply = [*tok.encode(rows[1].reply), eot]
    short = director_batch(tok, rows[1:], max_len=len(reply) + 3)
    assert short.ids[0].tolist() == conversation(tok, rows[1])[-(len(reply) + 3) :]
    assert short.targets[0][short.scored[0]].tolist() == reply
    with pytest.raises(HerdError, match=f"row 1: its reply has {len(reply)} tokens"):
        director_batch(tok, rows, max_len=len(reply))
    with pytest.raises(HerdError, match="row 0: expected label 0 or 1"):
        director_batch(tok, [DirectorRow(rows[0].messages, "ok", 2)], max_len=256)


def test_loss_is_the_bce_of_each_taken_token_and_the_lm_gets_no_gradient(toy):
    tok, model = toy
    rng = random.Random(2)
    rows = [weather_row(rng, c, good) for c, good in zip(CITIES[:5], (1, 0, 0, 1, 0), strict=True)]
    head = DirectorHead(model.config.dim, model.config.vocab_size)
    with torch.no_grad():
        head.proj.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
        head.bias.fill_(0.2)
    loss = director_loss(model, head, director_batch(tok, rows, max_len=256))
    # directly: each row alone (no padding), every logit of the head, then gather token by token
    terms = []
    for row in rows:
        ids = conversation(tok, row)
        start = len(encode_dialog(tok, row.messages).ids)
        with torch.no_grad():
            logits = head(model(torch.tensor([ids]), hidden=True))[0]
        for t in range(start, len(ids)):
            label = torch.tensor(float(row.label))
            terms.append(F.binary_cross_entropy_with_logits(logits[t - 1, ids[t]], label))
    assert abs(loss.item() - torch.stack(terms).mean().item()) < 1e-6
    loss.backward()
    assert all(p.grad is None for p in model.parameters())
    # only the rows of tokens some reply took get a gradient; every other vocabulary entry none
    taken = {t for row in rows for t in tok.encode(row.reply)} | {tok.special_tokens["<|eot_id|>"]}
    touched = set(head.proj.weight.grad.abs().sum(1).nonzero().flatten().tolist())
    assert touched == taken and head.bias.grad.item() != 0


def test_gamma_zero_is_plain_decoding_and_a_penalised_token_is_avoided(toy):
    tok, model = toy
    eot = tok.special_tokens["<|eot_id|>"]
    head = DirectorHead(model.config.dim, model.config.vocab_size)
    with torch.no_grad():  # any head: gamma 0 must ignore it
        head.proj.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    for ask in ("How is Oslo today?", "Tell me about the weather in Quito."):
        prompt = prompt_ids(tok, ask)
        for temperature, top_k, seed in ((0.0, 0, 0), (0.9, 20, 3), (1.0, 0, 7)):
            plain = herd.generate(
                model, prompt, 20, temperature=temperature, top_k=top_k, seed=seed, stop_ids=[eot]
            )
            ours = director_generate(
                model, head, prompt, gamma=0.0, max_new_tokens=20, temperature=temperature,
                top_k=top_k, seed=seed, stop_ids=[eot],
            )  # fmt: skip
            assert ours == plain and plain[-1] == eot
    # a head that rates only the greedy first token bad: the LM's second choice comes instead
    prompt = prompt_ids(tok, "How is Oslo today?")
    with torch.no_grad():
        hidden = model(torch.tensor([prompt]), hidden=True)[0, -1]
        ranked = model.output(hidden).argsort(descending=True).tolist()
        # gamma 0: the LM's own log-probabilities (a distribution, not merely its argmax)
        lm = director_scores(model, DirectorHead(64, model.config.vocab_size), hidden[None], 0.0)
        assert abs(lm.exp().sum().item() - 1) < 1e-5
    head = DirectorHead(model.config.dim, model.config.vocab_size)
    with torch.no_grad():
        head.proj.weight[ranked[0]] = -hidden / hidden.norm() * 20
    assert director_generate(model, head, prompt, gamma=0.0, max_new_tokens=1) == ranked[:1]
    assert director_generate(model, head, prompt, gamma=1.0, max_new_tokens=1) == ranked[1:2]
    with pytest.raises(HerdError, match=r"gamma -1\.0"):
        director_generate(model, head, prompt, gamma=-1.0, max_new_tokens=1)
    with pytest.raises(HerdError, match="context of 256"):
        director_generate(model, head, prompt, gamma=1.0, max_new_tokens=256)


def test_training_learns_the_feedback_and_director_decoding_follows_it(toy, trained):
    tok, model = toy
    head, metrics, untouched = trained
    assert untouched  # the LM's weights are as they were, and got no gradient
    assert metrics["rows"] == 96 and metrics["steps"] == 300 and head.trained_rows == 96
    assert metrics["accuracy"] >= 0.85 and metrics["loss"] < 0.6  # a constant guess: 0.69
    rng = random.Random(3)
    held_out = [weather_row(rng, rng.choice(HELD_OUT_CITIES), i % 2 == 0) for i in range(32)]
    goodness = sequence_goodness(model, head, tok, held_out)
    right = [(g > 0.5) == (r.label == 1) for g, r in zip(goodness, held_out, strict=True)]
    assert sum(right) / len(right) >= 0.85  # chance is 0.5
    # decoding every city's every question: the LM mostly says rainy, Director sunny
    eot = tok.special_tokens["<|eot_id|>"]

    def sunny_share(gamma: float, temperature: float) -> float:
        said = []
        for i, (city, ask) in enumerate((c, a) for c in CITIES for a in ASKS):
            ids = director_generate(
                model, head, prompt_ids(tok, ask.format(c=city)), gamma=gamma,
                max_new_tokens=16, temperature=temperature, seed=i, stop_ids=[eot],
            )  # fmt: skip
            text = tok.decode(ids)
            said.append("sunny" in text and "rainy" not in text)
        return sum(said) / len(said)

    plain, steered = sunny_share(0.0, 1.0), sunny_share(2.0, 1.0)
    assert plain < 0.5 and steered > 0.9, (plain, steered)
    assert sunny_share(0.0, 0.0) < 0.5 < 0.9 < sunny_share(2.0, 0.0)


def test_saved_head_loads_to_the_same_decoding_and_bad_folders_are_refused(toy, trained, tmp_path):
    tok, model = toy
    head = trained[0]
    out = save_director(head, tmp_path / "director", base_checkpoint="ckpt/step-100", gamma=2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["director"]  # no temporary left over
    assert sorted(p.name for p in out.iterdir()) == ["director.json", "director.safetensors"]
    loaded, meta = load_director(out, model)
    assert meta["dim"] == 64 and meta["vocab_size"] == model.config.vocab_size
    assert meta["gamma"] == 2.0 and meta["base_checkpoint"] == "ckpt/step-100"
    assert meta["rows"] == 96 and loaded.trained_rows == 96 and meta["created"]
    for name, tensor in head.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
    prompt = prompt_ids(tok, "How is Lima today?")
    kwargs = dict(gamma=2.0, max_new_tokens=12, temperature=1.0, seed=5)
    assert director_generate(model, loaded, prompt, **kwargs) == director_generate(
        model, head, prompt, **kwargs
    )
    rows = [weather_row(random.Random(4), "Lima", True)]
    assert sequence_goodness(model, loaded, tok, rows) == sequence_goodness(model, head, tok, rows)

    with pytest.raises(HerdError, match=r"gamma -0\.5"):
        save_director(head, tmp_path / "other", base_checkpoint="ckpt", gamma=-0.5)
    with pytest.raises(HerdError, match="already exists"):
        save_director(head, out, base_checkpoint="ckpt", gamma=2.0)
    with pytest.raises(HerdError, match="no such Director folder"):
        load_director(tmp_path / "missing", model)
    wide = herd.build_model(herd.ModelConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=2,
                            ffn_dim=128, vocab_size=512, max_seq_len=256))  # fmt: skip
    vocab = model.config.vocab_size
    with pytest.raises(HerdError, match=f"vocab_size {vocab}, the model has 512") as error:
        load_director(out, wide)
    assert "\n" not in str(error.value)
    (out / "director.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(HerdError, match=r"director\.safetensors: not readable safetensors"):
        load_director(out, model)
    (out / "director.json").write_text("{not json")
    with pytest.raises(HerdError, match=r"director\.json: not valid JSON"):
        load_director(out, model)
    (out / "director.json").unlink()
    with pytest.raises(HerdError, match=r"no director\.json"):
        load_director(out, model)
    json.dumps(meta)  # what save wrote is plain JSON, for `herd agent` to print
