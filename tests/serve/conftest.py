"""A tiny served checkpoint: dim 64, 2 layers, a herd-trained byte-level BPE (Llama 3 chat format);
`Running`, a server for it on a free port (the API and web page tests); and a Guard on the tiny
keyword guard (tests/conftest.py's `tiny_guard`) for the safety-guard tests."""

from __future__ import annotations

import socket
import threading
import time

import openai
import pytest
import torch

import herd
from herd.checkpoint.io import save_herd_folder
from herd.guard.moderator import Moderator
from herd.serve.app import ServerState, create_app
from herd.serve.cli import draining_server
from herd.serve.engine import Engine
from herd.vocab.bpe import train_bpe
from tests.guard_model import CATEGORIES
from tests.tokenizer_corpus import CORPUS

CONFIG = herd.ModelConfig(
    dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=320, ffn_dim=96, max_seq_len=1024
)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    (root / "corpus.txt").write_text("\n".join(CORPUS[:10]) * 10, encoding="utf-8")
    tok_dir = train_bpe([root / "corpus.txt"], 320, root / "tok", show_progress=False)
    model = herd.build_model(CONFIG, seed=3)
    with torch.no_grad():  # sharper distributions than the small init gives, so ties are rare
        model.output.weight.mul_(20)
    files = [tok_dir / "tokenizer.json", tok_dir / "tokenizer_config.json"]
    return save_herd_folder(CONFIG, model.state_dict(), root / "tiny", tokenizer=files)


@pytest.fixture(scope="session")
def loaded(checkpoint):
    from herd.checkpoint.loading import load_for_command

    model, tok, _ = load_for_command(checkpoint, device="cpu", tokenizer_needed="to serve")
    return model.eval(), tok


@pytest.fixture(scope="session")
def guard(tiny_guard):
    from herd.guard.classify import Guard
    from herd.guard.policy import resolve_policy

    return Guard.load(tiny_guard, resolve_policy(None, CATEGORIES), device="cpu")


KEY = "sk-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A server in a background thread (uvicorn), its engine, and clients for it."""

    def __init__(self, loaded, max_batch=8, max_queue=64, load=True, guard=None):
        import uvicorn

        model, tok = loaded
        self.state = ServerState("tiny", KEY)
        if guard is not None:
            self.state.moderator = Moderator(guard, metrics=self.state.metrics)
        self.port = free_port()
        config = uvicorn.Config(
            create_app(self.state), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = draining_server(config, self.state, drain_timeout=30)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.engine = Engine(
            model,
            tok,
            max_batch=max_batch,
            max_queue=max_queue,
            prefill_chunk=16,
            metrics=self.state.metrics,
        )
        if load:
            self.state.set_engine(self.engine.start())
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0)
        self.aclient = openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
        if self.engine._thread.is_alive():
            self.engine.shutdown()
