"""RagSpec: a RAG (retrieval-augmented generation) as a user creates it: the documents it ingests, its
vector store, its embedding model, its LLM and its prompt. Pure pydantic: a bad spec fails here,
naming the field. Secrets are never in a spec (a spec is stored and shown): a password or an API key
is named by the environment variable that holds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from mlyard.core.specs.common import NAME_PATTERN, SpecModel, check_uri
from mlyard.core.uris import absolute

# The console's statuses of a RAG, and of its query route's deployment.
RAG_STATUSES = ("CREATE REQUESTED", "CREATE IN PROGRESS", "ACTIVE", "UPDATE IN PROGRESS", "DELETE IN PROGRESS",
                "CREATE FAILED", "UPDATE FAILED", "DELETE FAILED")
DEPLOY_STATUSES = ("DEPLOYING", "COMPLETE", "FAILURE")
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
DEFAULT_PROMPT = """Answer the question using only the context below. If the context does not hold the answer, \
say that you do not know. Cite the sources you used by their numbers, like [1].

Context:
{context}

Question: {question}
Answer:"""


class VectorStoreSpec(SpecModel):
    """Where the vectors are kept: the PostgreSQL + pgvector that `mlyard up` runs (embedded), or any
    PostgreSQL with pgvector, by URL or by host, port, user and database."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["embedded", "postgresql"] = Field(
        default="embedded", description="embedded: the PostgreSQL of `mlyard up`; postgresql: your own server.")
    url: str | None = Field(default=None, description="postgresql://user@host:port/database (no password in it: "
                                                      "see password_env).")
    host: str | None = Field(default=None, description="The server's host or IP (instead of url).")
    port: int = Field(default=15432, ge=1, le=65535, description="The server's port (a PostgreSQL Instance "
                                                                 "listens on 15432).")
    user: str = Field(default="postgres", max_length=63, description="The user to connect as.")
    database: str = Field(default="postgres", max_length=63, description="The database that holds the vectors.")
    password_env: str = Field(default="MLYARD_RAG_DB_PASSWORD", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                              description="The environment variable that holds the password (never the password).")

    @model_validator(mode="after")
    def _where(self) -> "VectorStoreSpec":
        if self.kind == "postgresql" and not (self.url or self.host):
            raise ValueError("a postgresql vector store needs url or host (or use kind: embedded)")
        if self.url is not None:
            from sqlalchemy.engine import make_url

            try:
                parsed = make_url(self.url)
            except Exception as exc:  # noqa: BLE001 - SQLAlchemy's ArgumentError and the like
                raise ValueError(f"url {self.url!r} is not a database URL (postgresql://user@host:port/db)") from exc
            if not parsed.drivername.startswith("postgresql"):
                raise ValueError(f"url must be a postgresql:// URL, not {parsed.drivername}://")
            if parsed.password:
                raise ValueError(f"url holds a password; remove it and put the password in the environment variable "
                                 f"{self.password_env} (password_env) instead: a spec is stored and shown")
        return self


class EmbeddingSpec(SpecModel):
    """The model that turns chunks and questions into vectors: the offline all-MiniLM-L6-v2 on this
    machine, or any OpenAI-compatible /v1/embeddings service."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(default=DEFAULT_EMBEDDING_MODEL, max_length=255,
                       description="all-MiniLM-L6-v2 (offline, CPU), a sentence-transformers model directory, or "
                                   "the model name the url serves.")
    url: str | None = Field(default=None, description="Base URL of an OpenAI-compatible embeddings service "
                                                      "(…/v1); its /embeddings route is called.")
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="The environment variable that holds the service's API key.")
    batch_size: int = Field(default=64, ge=1, le=4096, description="Chunks embedded per call.")
    instance_type: str = Field(default="local", max_length=64, description="Where the embedding model runs.")
    instance_count: int = Field(default=1, ge=1, le=10, description="How many instances run it.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"an http(s):// URL, not {v!r}")
        return v

    def model_folder(self) -> str | None:
        """The model's folder, when `model` names one (a location read like the documents)."""
        return None if self.url or self.model == DEFAULT_EMBEDDING_MODEL else self.model


class LlmSpec(SpecModel):
    """The model that writes the answer: an mlyard endpoint with OpenAI routes, any OpenAI-compatible
    base URL, or (neither given) the offline SmolLM2 run by the RAG's query service itself."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str | None = Field(default=None, pattern=NAME_PATTERN,
                                 description="An mlyard endpoint that serves a chat model (mlyard endpoints list).")
    base_url: str | None = Field(default=None, description="An OpenAI-compatible base URL (…/v1), instead of "
                                                           "an endpoint.")
    model: str = Field(default="smollm2", max_length=255, description="The model name to ask for.")
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="The environment variable that holds the API key or endpoint token.")
    max_tokens: int = Field(default=256, ge=1, le=32768, description="The longest answer, in tokens.")
    temperature: float | None = Field(default=None, ge=0, le=2,
                                      description="Sampling temperature of the answers (0: greedy, the same answer "
                                                  "every time); unset, the LLM's own default. A query's own wins.")
    timeout_seconds: float = Field(default=60.0, gt=0, le=3600, description="How long to wait for the LLM.")
    answer: Literal["auto", "generate", "extract"] = Field(
        default="auto", description="How answers are made: generate (the LLM writes them), extract (the retrieved "
        "passages' sentences closest to the question, each cited), or auto: extract while the LLM is the built-in "
        "SmolLM2 (too small to answer well), generate with any other.")
    instance_type: str = Field(default="local", max_length=64, description="Where the LLM runs.")
    instance_count: int = Field(default=1, ge=1, le=10, description="How many instances run it.")

    def model_folder(self) -> str | None:
        """The model's file or folder, when the RAG's query service runs one of its own other than SmolLM2 (a
        location read like the documents)."""
        return None if self.endpoint or self.base_url or self.model == "smollm2" else self.model

    @model_validator(mode="after")
    def _one(self) -> "LlmSpec":
        if self.endpoint and self.base_url:
            raise ValueError("give endpoint or base_url, not both")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: an http(s):// URL, not {self.base_url!r}")
        return self


class RagSpec(SpecModel):
    """A RAG: documents under a path, kept as vectors, answered through an LLM."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="RAG name (the `model` of a query): lowercase letters, "
                                                        "digits and '-', 1-50, unique.")
    description: str = Field(default="", max_length=255, description="What this RAG answers about.")
    path: str = Field(description="Where the documents are: s3://, obs://, nas:// or a path. Sync reads it again.")
    instance_type: str = Field(default="local", max_length=64, description="Where the query service runs.")
    instance_count: int = Field(default=1, ge=1, le=10, description="How many query service instances run.")
    token_endpoint: str | None = Field(
        default=None, pattern=NAME_PATTERN,
        description="Protect the query route with the tokens of this endpoint (mlyard endpoints tokens issue); "
                    "sent as 'Authorization: Bearer TOKEN' or 'x-nhn-apikey: TOKEN'. Unset: open to all.")
    prompt: str = Field(default=DEFAULT_PROMPT, max_length=20000,
                        description="The prompt template: {context} (the retrieved chunks, numbered) and "
                                    "{question} (the user's last message) are filled in.")
    top_k: int = Field(default=4, ge=1, le=50, description="How many chunks a query retrieves.")
    chunk_tokens: int = Field(default=200, ge=16, le=2048, description="Tokens per chunk (the embedding model "
                                                                       "reads 256 at most).")
    chunk_overlap: int = Field(default=40, ge=0, le=1024, description="Tokens each chunk shares with the previous.")
    vector_store: VectorStoreSpec = Field(default_factory=VectorStoreSpec, description="Where the vectors are kept.")
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec, description="The embedding model.")
    llm: LlmSpec = Field(default_factory=LlmSpec, description="The LLM that writes the answers.")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        check_uri("path", v)
        return v

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        missing = [p for p in ("{context}", "{question}") if p not in v]
        if missing:
            raise ValueError(f"the prompt template must hold {' and '.join(missing)}")
        try:
            v.format(context="", question="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"the prompt template has a placeholder other than {{context}} and {{question}} "
                             f"({exc!r}); write a literal brace as {{{{ or }}}}") from exc
        return v

    @model_validator(mode="after")
    def _chunks(self) -> "RagSpec":
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be less than chunk_tokens "
                             f"({self.chunk_tokens})")
        return self

    def resolved(self, base: Path) -> "RagSpec":
        return self.model_copy(update={"path": absolute(self.path, base)})
