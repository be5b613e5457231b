"""herd/model/speech.py and speech_model.py: the Conformer block against a direct implementation
written here from the formulas on the same fixed weights, the frame rates from the strides, clips
independent of their batch, the exact parameter count, and the language model's use of the
adapter's frames (text alone is the text model's; speech tokens without audio are an error)."""

from __future__ import annotations

import math

import pytest
import torch

import herd
from herd.errors import HerdError
from herd.model.families import build_model
from herd.model.speech import ConformerBlock, SpeechEncoder, rope_for
from herd.model.speech_config import SpeechConfig
from herd.model.speech_model import Audio, speech_prompt

SPEECH = SpeechConfig(n_mels=8, dim=16, n_layers=2, n_heads=2, ffn_dim=24, conv_kernel=5)
CONFIG = herd.ModelConfig(
    dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, ffn_dim=48, max_seq_len=128,
    speech=SPEECH,
)  # fmt: skip


def _randomise(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _layer_norm(x, norm):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _rotate(x, theta):
    """Rotary positions as complex multiplication: each pair (x_i, x_{i + d/2}) of a head is the
    complex number x_i + j x_{i + d/2}, turned by position * theta^(-2i/d)."""
    T, _, D = x.shape
    half = D // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / D)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * freqs[None, :]
    z = torch.complex(x[..., :half].double(), x[..., half:].double())
    z = z * torch.polar(torch.ones_like(angles), angles)[:, None, :]
    return torch.cat([z.real, z.imag], dim=-1).float()


def _direct_block(block: ConformerBlock, x: torch.Tensor, c: SpeechConfig) -> torch.Tensor:
    """One clip [T, dim], no padding: the Conformer block's formulas, written out."""

    def ffn(f, h):
        a = _layer_norm(h, f.norm) @ f.w1.weight.T + f.w1.bias
        return (a * torch.sigmoid(a)) @ f.w2.weight.T + f.w2.bias

    T, H, D = x.shape[0], c.n_heads, c.head_dim
    x = x + 0.5 * ffn(block.ffn_in, x)
    a = block.attn
    h = _layer_norm(x, a.norm)
    q = _rotate((h @ a.wq.weight.T + a.wq.bias).view(T, H, D), c.rope_theta)
    k = _rotate((h @ a.wk.weight.T + a.wk.bias).view(T, H, D), c.rope_theta)
    v = (h @ a.wv.weight.T + a.wv.bias).view(T, H, D)
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(D)
    out = torch.einsum("hts,shd->thd", scores.softmax(-1), v).reshape(T, H * D)
    x = x + out @ a.wo.weight.T + a.wo.bias
    m = block.conv
    h = _layer_norm(x, m.norm) @ m.pointwise_in.weight.T + m.pointwise_in.bias
    h = h[:, : c.dim] * torch.sigmoid(h[:, c.dim :])  # GLU
    pad = c.conv_kernel // 2
    padded = torch.cat([torch.zeros(pad, c.dim), h, torch.zeros(pad, c.dim)])
    w = m.depthwise.weight[:, 0, :]  # [dim, kernel]: one filter per channel
    h = torch.stack([(padded[t : t + c.conv_kernel].T * w).sum(-1) for t in range(T)])
    h = _layer_norm(h + m.depthwise.bias, m.conv_norm)
    x = x + (h * torch.sigmoid(h)) @ m.pointwise_out.weight.T + m.pointwise_out.bias
    x = x + 0.5 * ffn(block.ffn_out, x)
    return _layer_norm(x, block.norm)


def test_conformer_block_matches_the_direct_formulas():
    block = ConformerBlock(SPEECH)
    _randomise(block, 0)
    x = torch.randn(11, SPEECH.dim, generator=torch.Generator().manual_seed(1))
    keep = torch.ones(1, 11, dtype=torch.bool)
    with torch.no_grad():
        got = block(x[None], rope_for(SPEECH, 11, "cpu"), keep)[0]
        want = _direct_block(block, x, SPEECH)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_frame_rates_from_the_strides():
    c = SpeechConfig()  # the paper's: stack 4 (40 ms), adapter stride 2 (80 ms)
    for seconds in (1, 2.5, 10):
        samples = int(seconds * 16000)
        mel = samples // 160  # 10 ms
        assert mel // c.stack == int(seconds * 1000 // 40)  # 40 ms frames
        assert c.frames_for(samples) == math.ceil(mel // c.stack / 2)  # 80 ms frames
    encoder = SpeechEncoder(SPEECH, 32)
    _randomise(encoder, 2)
    features = torch.randn(1, 200, SPEECH.n_mels)  # 2 s of 10 ms frames
    out, lengths = encoder(features, torch.tensor([200]))
    assert out.shape[1] == lengths.item() == SPEECH.frames_for(2 * 16000) == 25


def test_a_clip_is_independent_of_its_batch():
    encoder = SpeechEncoder(SPEECH, 32).eval()
    _randomise(encoder, 3)
    gen = torch.Generator().manual_seed(4)
    short, long = torch.randn(90, 8, generator=gen), torch.randn(160, 8, generator=gen)
    batch = torch.zeros(2, 160, 8)
    batch[0, :90], batch[1] = short, long
    with torch.no_grad():
        alone, n = encoder(short[None], torch.tensor([90]))
        together, lengths = encoder(batch, torch.tensor([90, 160]))
    assert lengths.tolist() == [n.item(), SPEECH.frames_for(160 * 160)]
    torch.testing.assert_close(together[0, : n.item()], alone[0], rtol=1e-4, atol=1e-5)


def test_parameter_count_is_exact():
    model = build_model(CONFIG)
    assert sum(p.numel() for p in model.parameters()) == CONFIG.num_params()
    # the paper's Conformer: 1B parameters (24 layers of width 1536)
    paper = SpeechConfig()
    conformer = paper.encoder_params(4096) - SpeechConfig(n_layers=0).encoder_params(4096)
    assert 0.99e9 < conformer < 1.01e9


def test_the_language_model_reads_the_adapter_frames():
    model = build_model(CONFIG, seed=5).eval()
    _randomise(model.speech, 6)
    text = herd.build_model(CONFIG.replace(speech=None), seed=5).eval()
    prompt = [1, 2, 3]
    with torch.no_grad():  # text alone: the text model
        torch.testing.assert_close(model(torch.tensor([prompt])), text(torch.tensor([prompt])))
    samples = 8000  # half a second
    ids = [1, 2, *speech_prompt(CONFIG, samples), 3, 4]
    start, _, frame = CONFIG.speech_token_ids
    assert ids.count(frame) == SPEECH.frames_for(samples) and ids[2] == start
    features = torch.randn(1, 1, samples // 160, SPEECH.n_mels)
    audio = Audio(features, torch.tensor([[samples // 160]]))
    tokens = torch.tensor([ids])
    with torch.no_grad():
        logits = model(tokens, audio=audio)
        embeds = model.embed_tokens(tokens, audio)
        frames, _ = model.speech(features[0], torch.tensor([samples // 160]))
    torch.testing.assert_close(logits[:, :2], text(torch.tensor([[1, 2]])))  # before the clip
    slots = tokens[0] == frame
    torch.testing.assert_close(embeds[0, slots], frames[0])
    assert torch.equal(embeds[0, 2], model.extra_embed.weight[0])  # <|speech_start|>
    # the loss never counts a speech token as a target
    targets = tokens.clone()
    with torch.no_grad():
        loss = model(tokens, audio=audio, targets=targets, reduction="none")
    assert (loss[tokens >= CONFIG.vocab_size] == 0).all()


def test_speech_tokens_need_their_audio():
    model = build_model(CONFIG).eval()
    ids = torch.tensor([[1, *speech_prompt(CONFIG, 8000)]])
    with pytest.raises(HerdError, match=r"<\|speech\|> tokens but no audio"):
        model(ids)
    audio = Audio(torch.randn(1, 1, 100, SPEECH.n_mels), torch.tensor([[100]]))  # 1 s, not 0.5
    with pytest.raises(HerdError, match="speech frames"):
        model(ids, audio=audio)
    with pytest.raises(HerdError, match="too short for one speech frame"):
        speech_prompt(CONFIG, 100)


def test_a_clip_longer_than_max_frames_is_one_line():
    short = CONFIG.replace(speech=SpeechConfig(n_mels=8, dim=16, n_layers=1, n_heads=2,
                                               ffn_dim=24, max_frames=10))  # fmt: skip
    model = build_model(short).eval()
    ids = torch.tensor([speech_prompt(short, 16000)])  # 1 s: 25 frames of 40 ms
    audio = Audio(torch.randn(1, 1, 100, 8), torch.tensor([[100]]))
    with pytest.raises(
        HerdError, match=r"25 40 ms frames .* longer than the speech encoder's"
    ) as e:
        model(ids, audio=audio)
    assert "\n" not in str(e.value)
