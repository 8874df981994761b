"""Backend.AI's runtime variants, as data: the inference engines that serve a model folder without a
model-definition file, because the variant gives the definition (Backend.AI's own model definition
generators, lablup/backend.ai src/ai/backend/manager/sokovan/deployment/definition_generator/).

- vllm: port 8000, health /health, probed every 10 s, 10 retries, first after 300 s (model loading);
- nim: port 8000, health /v1/health/ready, every 10 s, 10 retries;
- huggingface-tgi: port 3000, health /info;
- sglang: port 9001, health /health, every 10 s, 10 retries;
- modular-max: port 8000, health /health, every 10 s, 10 retries, first after 1800 s;
- cmd: the image's own command, port 8000, no health check;
- llama-cpp: not among the generators of the source we read: llama.cpp's `llama-server` as its own
  documentation runs it (port 8080, health /health), its GGUF file found in the folder;
- custom: the folder's own model-definition.yaml (serving/modelfolder.py).

Backend.AI mounts the model folder at /models and runs the image's start command; mlyard gives each engine
its start command with the model path and port (what the images run), so that the same definition runs on
one machine (the engine on PATH, the folder for /models) and on a cluster (the variant's image, the folder
copied to /models). The folder's `service-definition.toml` section of the variant adds the image, resource
slots and environment; the stage's own `args` (extra engine flags; for cmd and nim, the command itself, as
container arguments replace an image's command) and `environ` come last.
"""

from __future__ import annotations

from dataclasses import dataclass

MOUNT = "/models"  # where Backend.AI mounts the model folder in the container


@dataclass(frozen=True)
class Variant:
    name: str
    model_name: str  # the model's name in Backend.AI's generated definition
    port: int
    health: str | None
    command: tuple[str, ...]  # the engine's start command ({model}, {port}, {host} filled in); empty: the image's own
    image: str  # the image on a cluster when neither the stage nor service-definition.toml names one
    initial_delay: float | None = None  # seconds before the first probe; None: Backend.AI's default (60)
    interval: float = 10.0
    max_retries: int = 10
    cluster_command: tuple[str, ...] = ()  # in the image, when it differs from the command above


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("vllm", "vllm-model", 8000, "/health", ("vllm", "serve", "{model}", "--host", "{host}", "--port", "{port}"),
            "vllm/vllm-openai:v0.11.0", initial_delay=300.0),
    Variant("nim", "nim-model", 8000, "/v1/health/ready", (), "nvcr.io/nim/meta/llama-3.1-8b-instruct:latest"),
    Variant("huggingface-tgi", "tgi-model", 3000, "/info",
            ("text-generation-launcher", "--model-id", "{model}", "--hostname", "{host}", "--port", "{port}"),
            "ghcr.io/huggingface/text-generation-inference:3.3.4"),
    Variant("sglang", "sglang-model", 9001, "/health",
            ("python3", "-m", "sglang.launch_server", "--model-path", "{model}", "--host", "{host}", "--port", "{port}"),
            "lmsysorg/sglang:latest"),
    Variant("modular-max", "max-model", 8000, "/health",
            ("max", "serve", "--model-path", "{model}", "--port", "{port}"), "modular/max-nvidia-full:latest",
            initial_delay=1800.0),
    Variant("cmd", "image-model", 8000, None, (), ""),
    Variant("llama-cpp", "llama-cpp-model", 8080, "/health",
            ("llama-server", "-m", "{model}/{gguf}", "--host", "{host}", "--port", "{port}"),
            "ghcr.io/ggml-org/llama.cpp:server",  # its entry point is /app/llama-server; the GGUF file is found
            cluster_command=("/bin/sh", "-c", 'exec /app/llama-server -m "$(ls /models/*.gguf | head -n 1)" '
                             '--host 0.0.0.0 --port 8080 "$@"', "llama-server")),
)}


def engine_health(runtime: dict | None) -> str | None:
    """Where the gateway probes a stage resource's Service on a cluster: mlyard's server's ready route, or its
    runtime variant's health path (None: a variant of no health check, routed while its pods are ready)."""
    variant = VARIANTS.get((runtime or {}).get("variant", "custom"))
    return "/v2/health/ready" if variant is None else variant.health
