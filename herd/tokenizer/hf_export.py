"""Tokenizer files for a Hugging Face folder, so that transformers encodes exactly as herd does.

A Hugging Face Llama folder's tokenizer is read by transformers from `tokenizer.json` (a
`tokenizers` pipeline), `tokenizer_config.json` (special tokens, BOS handling, chat template) and
`generation_config.json` (stop ids). Given only a Llama 2 `tokenizer.model`, transformers 5 builds a
default pipeline that adds no BOS and no leading "▁"; given a Llama 3 ranks file it loses the
special tokens. `write_hf_tokenizer` writes all four files from the herd tokenizer instead:

- Llama 3 (tiktoken): a byte-level BPE whose merges are derived from the ranks, Llama 3's split
  pattern and its 256 special tokens;
- Llama 2 / LLaMA (sentencepiece BPE): the pieces and merges of the sentencepiece model with byte
  fallback and the "▁" dummy prefix;
- any `tokenizer.json` herd reads (what `herd tokenizer train` writes): that file as it is;

each with a post-processor that adds BOS, and a Jinja chat template that renders herd's
`encode_dialog` layout (herd/tokenizer/chat.py) for the tokenizer's chat format.

Where transformers and herd cannot agree, by design of one or the other:
- transformers parses special-token text ("<|eot_id|>", "<s>") out of any input by default, which
  its chat templates rely on; herd encodes such text as ordinary text unless asked
  (`allow_special=True`). `tokenizer(text, split_special_tokens=True)` gives herd's default ids.
  In chat messages such text is parsed, or with `sanitize_control_tokens=True` encoded apart
  from its neighbours: either way not as herd's `encode_dialog` encodes it.
- herd encodes a Llama 3 header's "\\n\\n", the content and each tool call separately; a template
  renders one string, so content that starts with a line break (or whitespace and then one), or
  that sits beside a tool call, may be split into tokens differently.
- herd cuts runs of more than 25,000 whitespace or non-whitespace characters as Meta's Llama 3
  reference does; tokenizers does not. transformers also rejects lone surrogates, which herd
  replaces with U+FFFD.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFBackend

from herd.atomic_files import write_file_atomically
from herd.errors import HerdError
from herd.tokenizer.base import Tokenizer

FILE_NAMES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)
SPIECE_UNDERLINE = "\u2581"


class UnsupportedTokenizer(HerdError):
    """The tokenizer has no exact Hugging Face equivalent here (a sentencepiece unigram model)."""


def hf_tokenizer_files(tok: Tokenizer, model_max_length: int | None = None) -> dict[str, str]:
    """The text of each of FILE_NAMES for `tok`; UnsupportedTokenizer when there is none exact."""
    backend = hf_backend(tok)
    config = tokenizer_config(tok, model_max_length, getattr(backend.model, "unk_token", None))
    names = {i: name for name, i in tok.special_tokens.items()}
    special_map = {
        key: config[key]
        for key in ("bos_token", "eos_token", "unk_token", "pad_token")
        if key in config
    }
    generation = {"bos_token_id": tok.bos_id}
    stops = tok.stop_ids or ([tok.eos_id] if tok.eos_id is not None else [])
    if stops:  # herd's generate stops at any of these; transformers' generate reads this list
        generation["eos_token_id"] = stops[0] if len(stops) == 1 else list(stops)
    if tok.pad_id is not None and tok.pad_id in names:
        generation["pad_token_id"] = tok.pad_id
    return {
        "tokenizer.json": backend.to_str(pretty=True),
        "tokenizer_config.json": _json(config),
        "special_tokens_map.json": _json(special_map),
        "generation_config.json": _json(generation),
    }


def write_text_files(folder: Path, contents: dict[str, str]) -> list[Path]:
    """Write each named text into `folder`, each file atomically (herd.atomic_files)."""
    folder = Path(folder)
    for name, text in contents.items():
        write_file_atomically(folder / name, lambda f, text=text: f.write(text.encode("utf-8")))
    return [folder / name for name in contents]


def write_hf_tokenizer(
    tok: Tokenizer, folder: Path, model_max_length: int | None = None
) -> list[Path]:
    """Write FILE_NAMES for `tok` into `folder`; returns their paths."""
    return write_text_files(folder, hf_tokenizer_files(tok, model_max_length))


def _json(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# --- tokenizer.json ---------------------------------------------------------------------------


def hf_backend(tok: Tokenizer) -> HFBackend:
    """A `tokenizers` pipeline whose `encode(text)` is herd's `tok.encode(text, bos=True)` (for
    special-token text too when its `encode_special_tokens` is set, as herd's default)."""
    from herd.tokenizer.hf import HFTokenizer
    from herd.tokenizer.llama3 import Llama3Tokenizer
    from herd.tokenizer.sentencepiece_model import SentencePieceTokenizer

    if isinstance(tok, Llama3Tokenizer):
        backend = _from_tiktoken(tok)
    elif isinstance(tok, SentencePieceTokenizer):
        backend = _from_sentencepiece(tok)
    elif isinstance(tok, HFTokenizer):
        # herd encodes through this very file (without its post-processor, which is replaced).
        backend = HFBackend.from_file(str(tok.path))
    else:
        raise UnsupportedTokenizer(f"{tok.path}: no Hugging Face export for a {tok.kind} tokenizer")
    if tok.bos_id is not None:
        # herd adds BOS where a caller asks for it (training data, prompts); transformers callers
        # expect the tokenizer to add it, as Meta's own Llama 2 and Llama 3 folders do.
        bos = backend.id_to_token(tok.bos_id)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, tok.bos_id)],
        )
    else:
        backend.post_processor = None
    return backend


def _byte_level_text(data: bytes, table: dict[int, str]) -> str:
    """GPT-2's printable stand-in for each byte, the alphabet of byte-level BPE vocabularies."""
    return "".join(table[b] for b in data)


def _from_tiktoken(tok) -> HFBackend:
    from herd.tokenizer.hf import _byte_decoder
    from herd.tokenizer.llama3 import PATTERN, load_ranks

    table = {b: c for c, b in _byte_decoder().items()}
    ranks = load_ranks(tok.path)
    vocab = {_byte_level_text(token, table): rank for token, rank in ranks.items()}
    # tiktoken merges the adjacent pair whose concatenation has the lowest rank. A BPE merge list
    # does the same when every split of a token into two tokens is a merge ranked by that token:
    # which split meets the other first depends on the text, so all of them must be listed.
    merges = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], left, right))
    merges.sort()
    pairs = [(_byte_level_text(a, table), _byte_level_text(b, table)) for *_, a, b in merges]
    # ignore_merges: tiktoken returns a whole pre-token that is itself in the vocabulary without
    # merging, even when merging would reach a different split.
    backend = HFBackend(models.BPE(vocab=vocab, merges=pairs, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    specials = sorted(tok.special_tokens.items(), key=lambda item: item[1])
    if [i for _, i in specials] != list(range(len(ranks), len(ranks) + len(specials))):
        raise UnsupportedTokenizer(f"{tok.path}: special token ids do not follow the ranks")
    backend.add_special_tokens([AddedToken(n, special=True, normalized=False) for n, _ in specials])
    return backend


def _from_sentencepiece(tok) -> HFBackend:
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(tok.path.read_bytes())
    if proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
        kind = pb.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower()
        raise UnsupportedTokenizer(
            f"{tok.path}: a sentencepiece {kind} model; Hugging Face export supports sentencepiece "
            "BPE models (LLaMA, Llama 2)"
        )
    spec = proto.normalizer_spec
    if spec.name != "identity" or spec.remove_extra_whitespaces or spec.precompiled_charsmap:
        raise UnsupportedTokenizer(
            f"{tok.path}: sentencepiece normalization '{spec.name}' is not supported for Hugging "
            "Face export (LLaMA and Llama 2 use 'identity')"
        )
    piece = pb.ModelProto.SentencePiece
    if any(p.type == piece.USER_DEFINED for p in proto.pieces):
        # sentencepiece cuts these out of the text before merging; LLaMA and Llama 2 have none.
        raise UnsupportedTokenizer(
            f"{tok.path}: user-defined sentencepiece pieces are not exported"
        )
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    # Control, unknown and byte pieces are never formed by merging; only normal pieces are.
    normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == piece.NORMAL}
    # sentencepiece merges the adjacent pair whose concatenation scores highest (every split of a
    # piece, as for tiktoken above); Llama 2 gives "▁▁" a score of -1e9, so score, not id, orders.
    merges = []
    for text, (score, i) in normal.items():
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in normal and right in normal:
                merges.append((-score, i, vocab[left], left, right))
    merges.sort()
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    backend = HFBackend(
        models.BPE(
            vocab=vocab,
            merges=[(a, b) for *_, a, b in merges],
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=proto.trainer_spec.byte_fallback,
        )
    )
    # sentencepiece escapes spaces as "▁" and puts one in front of every string it encodes; added
    # tokens are cut out before normalizing, so each stretch of text between them gets one, as
    # each separate `encode` call does in herd's Llama 2 chat format.
    steps = [normalizers.Replace(" ", SPIECE_UNDERLINE)]
    if spec.add_dummy_prefix:
        steps.insert(0, normalizers.Prepend(SPIECE_UNDERLINE))
    backend.normalizer = normalizers.Sequence(steps)
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace(SPIECE_UNDERLINE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            *([decoders.Strip(" ", 1, 0)] if spec.add_dummy_prefix else []),
        ]
    )
    specials = [p.piece for p in proto.pieces if p.type in (piece.CONTROL, piece.UNKNOWN)]
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return backend


# --- tokenizer_config.json and the chat template ----------------------------------------------


def tokenizer_config(
    tok: Tokenizer, model_max_length: int | None = None, unk_token: str | None = None
) -> dict:
    """transformers' settings for the exported tokenizer (herd's HFTokenizer reads it back)."""
    names = {i: name for name, i in tok.special_tokens.items()}
    config: dict = {
        # the generic tokenizers-backed class takes tokenizer.json as written; transformers 5's
        # LlamaTokenizer would rebuild its own pipeline (Metaspace, a "▁" only at the very start),
        # neither byte-level nor sentencepiece's prefix on each stretch of text.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": tok.bos_id is not None,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,  # the template's special tokens must be parsed
    }
    for key, i in (("bos_token", tok.bos_id), ("eos_token", tok.eos_id), ("pad_token", tok.pad_id)):
        if i is not None and i in names:
            config[key] = names[i]
    if unk_token is not None:
        config["unk_token"] = unk_token
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    template = chat_template(tok)
    if template is not None:
        config["chat_format"] = tok.chat_format  # herd's own key, read by herd.tokenizer.hf
        config["chat_template"] = template
    return config


def _literal(text: str) -> str:
    """A Jinja string literal for `text` (JSON's escapes are Jinja's)."""
    return json.dumps(text)


# Mirrors herd.tokenizer.chat.encode_llama3: header, content unstripped, then tool calls (the code
# interpreter's after <|python_tag|>, built-in search tools as name.call(query="..."), custom tools
# as JSON with json.dumps' default spacing and ASCII escapes), then <|eom_id|> when an assistant
# stops for a built-in tool (or says so in stop_reason), else <|eot_id|>. Jinja cannot parse JSON,
# so tool-call arguments must be objects (transformers' convention), not JSON strings.
_LLAMA3_TEMPLATE = """\
{{- __BOS__ -}}
{%- for message in messages -%}
{%- if message.role not in ['system', 'user', 'assistant', 'tool', 'ipython'] -%}
{{- raise_exception('unknown role ' ~ message.role) -}}
{%- endif -%}
{{- '<|start_header_id|>' ~ ('ipython' if message.role == 'tool' else message.role) -}}
{{- '<|end_header_id|>\\n\\n' -}}
{%- set calls = message.tool_calls if message.role == 'assistant' and message.tool_calls else [] -%}
{%- set ns = namespace(builtin=false) -%}
{%- for call in calls -%}
{%- set fn = call.function if call.function is defined else call -%}
{%- if loop.first and fn.name == 'code_interpreter' -%}{{- '<|python_tag|>' -}}{%- endif -%}
{%- if fn.name in ['brave_search', 'wolfram_alpha', 'photogen', 'code_interpreter'] -%}
{%- set ns.builtin = true -%}
{%- endif -%}
{%- endfor -%}
{{- message.content if message.content is string else '' -}}
{%- for call in calls -%}
{%- set fn = call.function if call.function is defined else call -%}
{%- set args = fn.arguments if fn.arguments is defined else {} -%}
{%- if args is string -%}
{{- raise_exception('tool call arguments must be an object, not a JSON string') -}}
{%- elif fn.name in ['brave_search', 'wolfram_alpha', 'photogen'] -%}
{{- fn.name ~ '.call(query="' ~ (args.query if args.query is defined else '') ~ '")' -}}
{%- elif fn.name == 'code_interpreter' -%}
{{- args.code if args.code is defined else '' -}}
{%- else -%}
{{- '{"type": "function", "name": ' ~ fn.name | tojson(ensure_ascii=true) ~ ', "parameters": ' -}}
{{- args | tojson(ensure_ascii=true) ~ '}' -}}
{%- endif -%}
{%- endfor -%}
{%- set stop = message.stop_reason if message.stop_reason is defined else
    ('end_of_message' if ns.builtin else 'end_of_turn') -%}
{{- '<|eom_id|>' if message.role == 'assistant' and stop == 'end_of_message' else '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
{%- endif -%}
"""

# Mirrors herd.tokenizer.chat.encode_llama2 (Meta's chat_completion): the system prompt folded
# into the first user turn, BOS [INST] q [/INST] a EOS per pair, a final user turn left open.
_LLAMA2_TEMPLATE = """\
{%- if messages[0].role == 'system' -%}
{%- if messages | length < 2 -%}
{{- raise_exception('a system message must be followed by a user message') -}}
{%- endif -%}
{%- set first = '<<SYS>>\\n' ~ (messages[0].content or '') ~ '\\n<</SYS>>\\n\\n'
    ~ (messages[1].content or '') -%}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set first = messages[0].content or '' -%}
{%- set turns = messages -%}
{%- endif -%}
{%- for message in turns -%}
{%- if message.role != ('user' if loop.index0 % 2 == 0 else 'assistant') -%}
{{- raise_exception('Llama 2 chat needs user/assistant turns alternating from a user turn') -}}
{%- endif -%}
{%- set content = (first if loop.first else (message.content or '')) | trim -%}
{%- if message.role == 'user' -%}
{{- __BOS__ ~ '[INST] ' ~ content ~ ' [/INST]' -}}
{%- else -%}
{{- ' ' ~ content ~ ' ' ~ __EOS__ -}}
{%- endif -%}
{%- endfor -%}
"""


def chat_template(tok: Tokenizer) -> str | None:
    """The Jinja template of `tok.chat_format`, with this tokenizer's BOS/EOS text in it."""
    names = {i: name for name, i in tok.special_tokens.items()}
    bos, eos = names.get(tok.bos_id), names.get(tok.eos_id)
    if tok.chat_format == "llama3" and bos is not None:
        return _LLAMA3_TEMPLATE.replace("__BOS__", _literal(bos))
    if tok.chat_format == "llama2" and bos is not None and eos is not None:
        return _LLAMA2_TEMPLATE.replace("__BOS__", _literal(bos)).replace("__EOS__", _literal(eos))
    return None
