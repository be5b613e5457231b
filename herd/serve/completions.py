"""The two generation endpoints: chat completions (messages in the checkpoint's chat format) and
legacy text completions, each as one JSON response or an SSE stream of chunks.

A request with n choices runs as n engine requests with the same prompt (the prefix cache shares
its KV); a seeded request's choice i uses seed + i, so choices differ and each reproduces.

With a safety guard (`herd serve --guard`, herd/serve/moderation.py) an unsafe input is answered
with the refusal without running the model, and each choice is held until its whole reply has
passed the guard (then sent: one content chunk when streamed) or been replaced by the refusal;
either refusal has finish_reason "content_filter".
"""

from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from herd.errors import HerdError
from herd.serve import constraints, media, tools
from herd.serve import protocol as p
from herd.serve.engine import Engine
from herd.serve.image_slots import Pictures
from herd.serve.moderation import start_guarded
from herd.serve.relay import APIError, Generation, sse
from herd.serve.sampling import SamplingParams
from herd.serve.speech_frames import Clips
from herd.tokenizer.chat import encode_pictured_dialog


class _Completion:
    object_name = ""
    id_prefix = ""

    def __init__(self, state, engine: Engine, body) -> None:
        self.state, self.engine, self.body = state, engine, body
        self.tok = engine.tokenizer
        self.id = p.new_id(self.id_prefix)
        self.created = p.now()

    def piece(self, token: int) -> str:
        return self.tok.decode([token])

    def params(self, prompt: list[int], max_tokens: int | None, logprobs, constraint_for):
        b = self.body
        room = self.engine.max_model_len - len(prompt)
        if room < 1:
            raise APIError(
                400,
                f"this model's maximum context length is {self.engine.max_model_len} tokens, "
                f"and the prompt has {len(prompt)}",
                param="messages",
                code="context_length_exceeded",
            )
        bias = {int(t): v for t, v in (b.logit_bias or {}).items()}
        if bias and max(bias) >= self.engine.vocab_size:
            raise APIError(
                400,
                f"logit_bias: token id {max(bias)} is outside the vocabulary "
                f"(0..{self.engine.vocab_size - 1})",
                param="logit_bias",
            )
        return [
            SamplingParams(
                max_tokens=max_tokens or room,
                temperature=b.temperature,
                top_p=b.top_p,
                top_k=max(b.top_k, 0),
                seed=None if b.seed is None else b.seed + i,
                stop=b.stop or [],
                logprobs=logprobs,
                presence_penalty=b.presence_penalty,
                frequency_penalty=b.frequency_penalty,
                logit_bias=bias,
                constraint=constraint_for(),
            )
            for i in range(b.n)
        ]

    async def launch(self, prompts, params, dialogs: list[list[dict]], media=None) -> Generation:
        """The choices started on the engine (each with `media`, Engine.submit's images, video or
        audio, when given); with a guard, the inputs (`dialogs`, one per choice) checked first
        and each reply released after its output check."""
        moderator = self.state.moderator
        if moderator is not None:
            return await start_guarded(moderator, self.engine, prompts, params, dialogs, media)
        gen = Generation(self.engine)
        gen.start(prompts, params, media)
        return gen

    def chunk(self, choices: list[dict], **extra) -> str:
        return sse(
            {
                "id": self.id,
                "object": f"{self.object_name}.chunk" if self.object_name else "text_completion",
                "created": self.created,
                "model": self.state.model_name,
                "choices": choices,
                **extra,
            }
        )

    def stream(self, gen: Generation, body_stream):
        async def events():
            try:
                async for event in body_stream:
                    yield event
                yield "data: [DONE]\n\n"
            finally:  # the client went away, or the stream ended: free whatever still runs
                gen.cancel()

        return StreamingResponse(events(), media_type="text/event-stream")


class ChatCompletion(_Completion):
    object_name = "chat.completion"
    id_prefix = "chatcmpl"

    async def respond(self, request: Request):
        b = self.body
        # shown: (the part's name, the part) of each picture or clip
        messages, dialog, shown = [], [], []
        for i, m in enumerate(b.messages):
            found: list = []
            try:
                plain = m.as_dialog(found, f"messages[{i}]")
            except ValueError as e:
                raise APIError(400, f"messages[{i}].{e}", param="messages") from None
            if found and m.role != "user":
                name, part = found[0]
                what = {"image_url": "images go", "video_url": "videos go"}.get(
                    part["type"], "audio goes"
                )
                raise APIError(400, f"{name}: {what} in user turns only", param=name)
            dialog.append(plain)  # what the guard reads: the chat's text, without the tool prompt
            # a turn with media keeps its parts in order: each shown where it stands
            messages.append({**plain, "content": m.pieces(f"messages[{i}]")} if found else plain)
            shown += found
        self.tools = None
        grammar = None
        try:
            if b.tools and tools.resolve_tool_choice(b.tool_choice, b.tools) != "none":
                self.tools = tools
                messages = tools.tool_prompt(messages, b.tools, b.tool_choice)
                # "required" or a named function: the reply is decoded as such a call
                grammar = tools.tool_call_grammar(b.tools, b.tool_choice, self.tok)
            if grammar is None:
                grammar = constraints.response_format_grammar(b.response_format, self.tok)
        except ValueError as e:  # "FIELD...: what is wrong", one line
            raise APIError(400, str(e), param=str(e).split(":", 1)[0].split(".", 1)[0]) from None
        media, ids_of = None, None
        if shown:  # read first: a model without that medium or a bad part is the error to report
            media, ids_of = await self._media(shown)
        try:
            prompt = encode_pictured_dialog(self.tok, messages, ids_of)[0].ids
        except HerdError as e:
            raise APIError(400, str(e), param="messages") from None
        if b.top_logprobs is not None and not b.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        logprobs = (b.top_logprobs or 0) if b.logprobs else None
        # one compiled grammar per request, a matcher state per choice
        constraint_for = grammar.start if grammar is not None else (lambda: None)
        max_tokens = b.max_completion_tokens or b.max_tokens
        params = self.params(prompt, max_tokens, logprobs, constraint_for)
        gen = await self.launch([prompt] * b.n, params, [dialog] * b.n, media)
        self.prompt_tokens = len(prompt)  # an <|image|> id per picture, the speech tokens included
        if b.stream:
            return self.stream(gen, self._events(gen))
        deltas = await gen.collect(request)
        choices = [self._choice(i, d) for i, d in enumerate(deltas)]
        completion = sum(d[-1].completion_tokens for d in deltas)
        return JSONResponse(
            {
                "id": self.id,
                "object": self.object_name,
                "created": self.created,
                "model": self.state.model_name,
                "choices": choices,
                "usage": p.usage(self.prompt_tokens, completion),
            }
        )

    async def _media(self, parts: list[tuple[str, dict]]):
        """(Engine.submit's media, encode_pictured_dialog's ids of each part) of the request's
        parts: pictures (and a video model's one video) for a vision model, clips for a speech
        model; a part the model cannot take is a 400 naming it."""
        config = self.engine.model.config
        for first, part in parts:
            refusal = self._refusal(part["type"])
            if refusal is not None:
                raise APIError(400, f"{first}: {refusal}", param=first)
        if self.tok.chat_format != "llama3":
            first, part = parts[0]
            what = {"image_url": "images need", "input_audio": "audio needs"}.get(
                part["type"], "videos need"
            )
            raise APIError(
                400, f"{first}: {what} the Llama 3 chat format, not {self.tok.chat_format}",
                param=first,
            )  # fmt: skip
        if config.speech is not None:
            return await self._clips(parts)
        return await self._pictures_and_video(parts)

    def _refusal(self, kind: str) -> str | None:
        """Why the served model takes no `kind` content parts, or None when it takes them."""
        config, name = self.engine.model.config, self.state.model_name
        noun = {"image_url": "images", "input_audio": "audio", "video_url": "video"}[kind]
        if config.speech is not None and kind != "input_audio":
            return f"the model '{name}' is a speech model: it takes no {noun}"
        if config.speech is None and kind == "input_audio":
            return f"the model '{name}' has no speech encoder: it takes no audio"
        if kind == "video_url" and config.video is None:
            return f"the model '{name}' has no video adapter: it takes no video"
        if kind == "image_url" and self.engine.images is None:
            return f"the model '{name}' is text-only: it takes no images"
        return None

    async def _pictures_and_video(self, parts: list[tuple[str, dict]]):
        """A vision model's pictures and, for a video model, its one video: Engine.submit's
        media and the ids each part shows (<|image|> or <|video|>)."""
        config = self.engine.model.config
        videos = [(n, p) for n, p in parts if p["type"] == "video_url"]
        pictures = [(n, p) for n, p in parts if p["type"] == "image_url"]
        if len(videos) > 1:  # the model's rule: a row shows one clip at most
            second = videos[1][0]
            raise APIError(400, f"{second}: a request shows one video at most", param=second)
        submitted = {}
        if pictures:
            submitted["images"] = await self._images(pictures)
        if videos:
            submitted["video"] = await self._video(*videos[0])

        def ids_of(piece) -> list[int]:
            video = piece[1]["type"] == "video_url"
            return [config.video_token_id if video else config.image_token_id]

        return submitted, ids_of

    async def _video(self, part_name: str, part: dict):
        """The request's video as the engine takes it (read, sampled, tiled and hashed on a
        worker thread)."""
        from herd.serve.video_slots import VideoClip

        config, root = self.engine.model.config, self.state.local_media

        def read():
            return VideoClip.of(media.read_video(part, part_name, config, root))

        try:
            return await asyncio.to_thread(read)
        except media.MediaError as e:
            raise APIError(400, str(e), param=e.param) from None

    async def _clips(self, parts: list[tuple[str, dict]]):
        """The request's clips as the engine takes them (read, featurised and hashed on a
        worker thread), and the ids that show each part's clip."""
        config = self.engine.model.config

        def read():
            heard = [media.read_clip(part, name, config) for name, part in parts]
            shown = {name: ids for (name, _), (ids, _) in zip(parts, heard, strict=True)}
            return Clips.of([features for _, features in heard]), shown

        try:
            clips, shown = await asyncio.to_thread(read)
        except media.MediaError as e:
            raise APIError(400, str(e), param=e.param) from None
        return {"audio": clips}, lambda piece: shown[piece[0]]

    async def _images(self, pictures: list[tuple[str, dict]]):
        """The request's pictures as the model's Images, fingerprinted (read, tiled and hashed
        on a worker thread)."""
        engine = self.engine
        if len(pictures) > engine.max_images:
            raise APIError(
                400,
                f"messages: {len(pictures)} images; this server takes at most "
                f"{engine.max_images} per request",
                param="messages",
            )
        root = self.state.local_media

        def read():
            from herd.model.image_processing import ImageProcessor

            rows = [
                media.read_picture(media.image_url_of(part, name), name, root)
                for name, part in pictures
            ]
            return Pictures.of(ImageProcessor(engine.model.config.vision)([rows]))

        try:
            return await asyncio.to_thread(read)
        except media.MediaError as e:
            raise APIError(400, str(e), param=e.param) from None
        except HerdError as e:
            raise APIError(400, f"messages: {e}", param="messages") from None

    def _finish(self, text: str, reason: str) -> tuple[dict, str]:
        """The message (content or tool calls) of a finished choice, and its finish_reason."""
        calls = self.tools.parse_tool_calls(text, self.body.tools) if self.tools else None
        if calls:
            return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
        return {"role": "assistant", "content": text}, reason

    def _choice(self, index: int, deltas: list) -> dict:
        text = "".join(d.text for d in deltas)
        message, reason = self._finish(text, deltas[-1].finish_reason)
        tokens = [t for d in deltas for t in d.tokens]
        logprobs = p.chat_logprobs(tokens, self.piece) if self.body.logprobs else None
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": reason}

    async def _events(self, gen: Generation):
        b = self.body
        for i in range(b.n):
            yield self.chunk([self._delta(i, {"role": "assistant", "content": ""})])
        held = [""] * b.n  # with tools, a choice's text is sent once it is known not to be a call
        completion = 0
        async for i, d in gen.deltas():
            logprobs = p.chat_logprobs(d.tokens, self.piece) if b.logprobs else None
            if self.tools is not None:
                held[i] += d.text
            elif d.text or (logprobs and logprobs["content"]):
                yield self.chunk([self._delta(i, {"content": d.text}, logprobs)])
            if d.finish_reason is not None:
                completion += d.completion_tokens
                reason = d.finish_reason
                if self.tools is not None:
                    message, reason = self._finish(held[i], reason)
                    message.pop("role")
                    if message.get("tool_calls"):
                        for k, call in enumerate(message["tool_calls"]):
                            call.setdefault("index", k)
                    yield self.chunk([self._delta(i, message)])
                yield self.chunk([self._delta(i, {}, None, reason)])
        if b.stream_options is not None and b.stream_options.include_usage:
            yield self.chunk([], usage=p.usage(self.prompt_tokens, completion))

    @staticmethod
    def _delta(i: int, delta: dict, logprobs=None, finish=None) -> dict:
        return {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


class TextCompletion(_Completion):
    id_prefix = "cmpl"

    async def respond(self, request: Request):
        b = self.body
        prompts = self._prompts()
        texts = [self.tok.decode(ids) for ids in prompts] if b.echo else [""] * len(prompts)
        jobs, params, dialogs = [], [], []
        for prompt in prompts:
            jobs += [prompt] * b.n
            params += self.params(prompt, b.max_tokens, b.logprobs, lambda: None)
            # the guard reads a prompt as a user turn and the completion as the agent's reply
            text = self.tok.decode(prompt, skip_special=True)
            dialogs += [[{"role": "user", "content": text}]] * b.n
        self.echo = [t for t in texts for _ in range(b.n)]
        self.prompt_tokens = sum(len(x) for x in prompts)
        gen = await self.launch(jobs, params, dialogs)
        if b.stream:
            return self.stream(gen, self._events(gen))
        deltas = await gen.collect(request)
        choices = []
        for i, ds in enumerate(deltas):
            text = self.echo[i] + "".join(d.text for d in ds)
            choices.append(self._choice(i, text, [t for d in ds for t in d.tokens], ds[-1]))
        return JSONResponse(
            {
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.state.model_name,
                "choices": choices,
                "usage": p.usage(self.prompt_tokens, sum(d[-1].completion_tokens for d in deltas)),
            }
        )

    def _prompts(self) -> list[list[int]]:
        prompt = self.body.prompt
        if isinstance(prompt, str):
            prompt = [prompt]
        if prompt and isinstance(prompt[0], int):
            prompt = [prompt]
        if not prompt:
            raise APIError(400, "prompt: must not be empty", param="prompt")
        return [self.tok.encode(x, bos=True) if isinstance(x, str) else list(x) for x in prompt]

    def _choice(self, i: int, text: str, tokens: list, last) -> dict:
        logprobs = None
        if self.body.logprobs is not None:
            logprobs = p.completion_logprobs(tokens, self.piece, len(self.echo[i]))
        return {"index": i, "text": text, "logprobs": logprobs, "finish_reason": last.finish_reason}

    async def _events(self, gen: Generation):
        b = self.body
        completion = 0
        for i, text in enumerate(self.echo):
            if text:
                yield self.chunk(
                    [{"index": i, "text": text, "logprobs": None, "finish_reason": None}]
                )
        offsets = [len(t) for t in self.echo]
        async for i, d in gen.deltas():
            if d.text or d.finish_reason is not None:
                logprobs = None
                if b.logprobs is not None:
                    logprobs = p.completion_logprobs(d.tokens, self.piece, offsets[i])
                offsets[i] += len(d.text)
                choice = {"index": i, "text": d.text, "logprobs": logprobs}
                yield self.chunk([{**choice, "finish_reason": d.finish_reason}])
            if d.finish_reason is not None:
                completion += d.completion_tokens
        if b.stream_options is not None and b.stream_options.include_usage:
            yield self.chunk([], usage=p.usage(self.prompt_tokens, completion))
