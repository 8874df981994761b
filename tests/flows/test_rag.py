"""RAGs on the running platform, as users reach them: the CLI in fresh processes creates a RAG over a
folder of mixed documents (ingested by a flow run of rag-sync/rag-sync-local on the real worker into the real
embedded PostgreSQL + pgvector, embedded by the offline all-MiniLM-L6-v2), syncs after a change,
shows the history, searches, and deletes it; and the rules and bad input."""

import contextlib
import json
import sys
import time
from pathlib import Path

import pytest
from test_user_paths import _ok, _one_line_error, mlyard, project, shell

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "rag"))
import make_docs  # noqa: E402


def _json(*args: str):
    return json.loads(_ok(mlyard(*args, "--json")))


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory, tiny_chat_model):
    """A tiny random chat model (tests/serving/tiny_llm.py): the RAG's own LLM replica serves it."""
    # a context that holds a prompt of 3 chunks
    return tiny_chat_model(tmp_path_factory.mktemp("tiny-llm"), context=4096)


def _seed_examples() -> tuple[str, str] | None:
    """The EasyMaker guide's own two query examples (the plain curl call and the streaming curl + jq script),
    read out of the product documents beside this checkout (../shared/seeds) at test time, so that they
    run exactly as the guide prints them; None when those documents are not there."""
    import re

    seeds = Path(__file__).resolve().parents[3] / "shared" / "seeds"
    for doc in sorted(seeds.glob("*.txt")):
        blocks = [b for b in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S) if "/rag/v1/query" in b]
        plain = [b for b in blocks if "getopts" not in b]
        streaming = [b for b in blocks if "getopts" in b and "x-nhn-apikey" in b]
        if plain and streaming:
            return plain[0], streaming[0]
    return None


def _run_seed_examples(url: str, rag: str, question: str, key: str | None = None) -> None:
    """Run the guide's curl call (its placeholders filled: address, RAG name, question) and its streaming
    script as published (-u URL -m RAG -p QUESTION, and -k KEY when the route takes tokens). The RAG
    answers greedily (temperature 0), so both must print exactly what the openai package is answered."""
    import re
    import warnings

    from openai import OpenAI

    examples = _seed_examples()
    if examples is None:
        warnings.warn("the product documents (../shared/seeds) are not beside this checkout: the guide's own curl "
                      "examples were not run", stacklevel=2)
        return
    plain, streaming = examples
    answer = OpenAI(base_url=url.removesuffix("/query"), api_key=key or "unused").chat.completions.create(
        model=rag, messages=[{"role": "user", "content": question}]).choices[0].message.content
    assert answer and answer.strip(), answer  # the tiny model's greedy answers are printable text
    if key is None:  # the guide's plain call sends no key
        call = re.sub(r"https://\{[^}]+\}/rag/v1/query", url, plain)
        call = re.sub(r'("model":\s*)"\{[^{}"]+\}"', rf'\1"{rag}"', call)
        call = re.sub(r'("content":\s*)"\{[^{}"]+\}"', rf'\1"{question}"', call)
        answered = shell("bash", "-c", call)
        assert answered.returncode == 0, answered.stderr
        body = json.loads(answered.stdout)
        assert body["model"] == rag and body["choices"][0]["message"]["content"] == answer, (body, answer)
        assert body["sources"], body
    script = project(f"seed-script-{rag}") / "rag_stream.sh"
    script.write_text(streaming)
    args = ["-u", url, "-m", rag, "-p", question] + (["-k", key] if key else [])
    streamed = shell("bash", str(script), *args)
    # the script prints only the streamed delta.content pieces, then a newline (its banner goes to stderr)
    assert streamed.returncode == 0 and streamed.stdout == answer + "\n", (streamed.stdout, answer, streamed.stderr)


def _view(name: str) -> dict:
    """The RAG as `mlyard rags show` gives it, read in this process: the waits below poll with it, since a
    fresh `mlyard` process every half second would take a core from the flow run it waits for."""
    from mlyard import rags

    return rags.show(name)


def _deployed(name: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while _view(name)["deploy_status"] == "DEPLOYING" and time.monotonic() < deadline:
        time.sleep(0.5)
    view = _json("rags", "show", name)  # the user's view, from a fresh process
    assert view["deploy_status"] == "COMPLETE", view
    return view


def test_create_sync_history_search_query_and_delete(stack, settings, tmp_path, tiny_llm):
    where = project("rag-docs")
    make_docs.write(where)
    (where / "tool.exe").write_bytes(b"MZ")
    (where / "broken.pdf").write_bytes(b"%PDF-1.4 truncated")
    spec = where.parent / "rag.yaml"
    spec.write_text("name: handbook\npath: rag-docs\ndescription: the Yardstick handbook\ntop_k: 3\n"
                    f"llm: {{model: '{tiny_llm}', max_tokens: 12, temperature: 0}}\n")

    view = _json("rags", "create", "-f", str(spec), "--wait")
    assert view["status"] == "ACTIVE", view
    assert view["store"]["documents"] == 7 and view["store"]["chunks"] >= 7
    last = view["last_ingestion"]
    assert (last["added"], last["modified"], last["deleted"], last["state"]) == (7, 0, 0, "COMPLETE")
    why = {s["name"]: s["reason"] for s in last["skipped_files"]}
    assert "not a supported format" in why["tool.exe"] and "cannot be read as .pdf" in why["broken.pdf"]

    hits = _json("rags", "search", "handbook", "How long are backups kept?")
    assert (hits[0]["file"], hits[0]["where"]) == ("security.pdf", "page 2") and len(hits) == 3

    (where / "notes.txt").write_text("Yardstick release notes. Version 5.0 drops the legacy API.\n")
    (where / "prices.csv").unlink()
    synced = _json("rags", "sync", "handbook", "--wait")
    last = synced["last_ingestion"]
    assert (last["added"], last["modified"], last["deleted"], last["unchanged"]) == (0, 1, 1, 5), last
    assert synced["store"]["documents"] == 6
    history = _json("rags", "history", "handbook")
    assert [h["state"] for h in history] == ["COMPLETE", "COMPLETE"] and history[0]["chunks"] < history[1]["chunks"]
    # `mlyard rag search` (the group's other spelling) shows the retrieval alone
    assert "legacy API" in _json("rag", "search", "handbook", "What does version 5.0 drop?")[0]["text"]

    # the query route, as the seed's curl + jq script, the openai package and the CLI take it
    _deployed("handbook")
    # its own LLM (a model a member brought) runs in a sandbox that reads its folder, asked with that replica's
    # own credential: the replicas' shared one opens it no more than a neighbour's would
    import httpx
    import psutil

    from mlyard.core.connection import gateway_url, replica_headers
    from mlyard.tasks import replicas as files
    from mlyard.tasks import sandbox
    from mlyard.tasks.rag_service import healthy_member

    url, key = healthy_member(settings.home_dir, "handbook", "llm")
    (llm,) = files.of_stage(settings.home_dir, "rag:handbook", "llm")
    assert llm.reads == [str(Path(tiny_llm).resolve())]
    if sandbox.refusal() is None:  # where a sandbox can start at all
        assert psutil.Process(files.states(settings.home_dir)[key].pid).name() == "bwrap"
    assert httpx.get(f"{url}/openai/v1/models", headers=replica_headers(settings), timeout=10).status_code == 403

    gw = gateway_url(settings)
    script = Path(__file__).resolve().parents[2] / "examples" / "rag" / "ask.sh"
    asked = shell("bash", str(script), "-u", f"{gw}/rag/v1/query", "-m", "handbook", "-p", "How long are backups kept?")
    # temperature 0: the tiny model's weights are seeded and it answers greedily, so the same text every run
    # (sampled, it could stop at once and stream nothing: CI once saw that); printable text, then a newline
    assert asked.returncode == 0 and asked.stdout.strip() and not asked.stderr, (asked.stdout, asked.stderr)
    _run_seed_examples(f"{gw}/rag/v1/query", "handbook", "How long are backups kept?")
    from openai import OpenAI

    client = OpenAI(base_url=f"{gw}/rag/v1", api_key="unused")
    whole = client.chat.completions.create(model="handbook", messages=[{"role": "user", "content": "How long are "
                                                                                   "backups kept?"}])
    # the tiny model samples random tokens and may stop at once: the protocol is checked, not the prose
    assert whole.model == "handbook" and whole.choices[0].finish_reason in ("stop", "length")
    assert (whole.model_extra["sources"][0]["file"], whole.model_extra["sources"][0]["where"]) == \
        ("security.pdf", "page 2")
    assert whole.model_extra["citations_removed"] >= 0  # citations not among the sources (tests/serving/test_citations.py)
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="handbook", messages=[{"role": "user", "content": "Which regions?"}], stream=True) if c.choices]
    assert "".join(pieces)
    streamed = _json("rags", "query", "handbook", "When is support answered?")
    assert streamed["first_token_seconds"] is not None and streamed["sources"][0]["file"] == "support.docx"
    from openai import NotFoundError

    with pytest.raises(NotFoundError, match="no RAG 'nope'"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    # the RAG's embedding model through the gateway, as OpenAI's embeddings route (the openai package asks
    # for base64; floats as asked), the same vectors the RAG searches with
    import numpy as np

    packed = client.embeddings.create(model="handbook", input=["How long are backups kept?", "Backups are kept for "
                                                                "35 days.", "A mobile app comes next quarter."])
    floats = client.embeddings.create(model="handbook", input="How long are backups kept?", encoding_format="float")
    v = np.array([d.embedding for d in packed.data])
    assert v.shape == (3, 384) and packed.model == "all-MiniLM-L6-v2" and float(v[0] @ v[1]) > float(v[0] @ v[2])
    assert np.allclose(floats.data[0].embedding, v[0], atol=1e-6)
    from openai import BadRequestError

    with pytest.raises(BadRequestError, match="input: a string or a list of strings"):
        client.embeddings.create(model="handbook", input=[[1, 2, 3]])

    # the query service's embeddings route is OpenAI's: the openai package, and mlyard's own client for an
    # `embedding.url` (what a sync uses once the service runs), both read it
    from mlyard.core.connection import replica_headers
    from mlyard.core.specs.rag import EmbeddingSpec
    from mlyard.tasks.embeddings import ServiceEmbedder
    from mlyard.tasks.rag_service import service_url

    url = service_url(settings.home_dir, "handbook")
    assert url is not None
    # a replica answers the gateway's credential only (the platform's own ingestion shows it too)
    import openai

    with pytest.raises(openai.PermissionDeniedError) as refused:
        OpenAI(base_url=url, api_key="unused", max_retries=0).embeddings.create(model="all-MiniLM-L6-v2", input=["x"])
    assert "answers the mlyard gateway only" in refused.value.response.json()["error"]
    got = OpenAI(base_url=url, api_key="unused", default_headers=replica_headers(settings)).embeddings.create(
        model="all-MiniLM-L6-v2", input=["backups", "tokens"])
    assert [len(d.embedding) for d in got.data] == [384, 384]
    v = ServiceEmbedder(EmbeddingSpec(url=url), headers=replica_headers(settings)).encode(["How long are backups kept?", "Backups are kept for 35 days.",
                                                        "A mobile app comes next quarter."])
    assert v.shape == (3, 384) and float(v[0] @ v[1]) > float(v[0] @ v[2])

    # the prompt can be read in full and changed without a new ingestion; the route takes it at once
    assert "{context}" in _ok(mlyard("rags", "show", "handbook", "--prompt"))
    _one_line_error(mlyard("rags", "update", "handbook", "--set", "path=elsewhere"), "--set", "path")
    _one_line_error(mlyard("rags", "update", "handbook", "--set", "prompt=no placeholders"), "prompt", "{context}")
    updated = _json("rags", "update", "handbook", "--set", "top_k=1", "--set",
                    "prompt=Use {context} to answer {question} briefly.")
    assert updated["spec"]["top_k"] == 1 and updated["prompt"] == "Use {context} to answer {question} briefly."
    deadline = time.monotonic() + 10  # the query service reads the spec again within 2 s
    while len(sources := client.chat.completions.create(model="handbook", messages=[
            {"role": "user", "content": "Regions?"}]).model_extra["sources"]) != 1 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert len(sources) == 1, sources

    # answers made from the passages themselves (the default with the built-in SmolLM2): the sentence that
    # answers, cited with its passage, whole and streamed
    _json("rags", "update", "handbook", "--set", "top_k=3", "--set", "llm.answer=extract")
    deadline = time.monotonic() + 10
    while (whole := client.chat.completions.create(model="handbook", messages=[
            {"role": "user", "content": "How long are backups kept?"}])).model_extra.get("answer_kind") != "extractive":
        assert time.monotonic() < deadline, whole
        time.sleep(0.3)
    text = whole.choices[0].message.content
    cited = next(s["index"] for s in whole.model_extra["sources"] if s["file"] == "security.pdf")
    assert text.startswith("Backups of Yardstick are encrypted with AES-256 and kept for 35 days. "
                           f"[{cited}]"), (text, whole.model_extra["sources"])
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="handbook", messages=[{"role": "user", "content": "How long are backups kept?"}], stream=True)
              if c.choices]
    assert "".join(pieces) == text

    served = _json("rags", "stats", "handbook")["stats"]
    assert sum(r["calls"] for r in served) >= 4, served  # the gateway counts a RAG's queries as for an endpoint
    logged = _json("rags", "logs", "handbook", "--tail", "50")  # and its query service logs every request
    bodies = [r["body"] for r in logged if r["action"] == "RAG.Query" and r["endpointId"] == "rag:handbook"]
    assert any(b.startswith("POST /v1/chat/completions 200") and "first byte" in b for b in bodies), bodies
    assert any(b.startswith("POST /v1/search 200") for b in bodies), bodies

    listed = _json("rags", "list")
    assert [(r["name"], r["status"]) for r in listed] == [("handbook", "ACTIVE")]
    _one_line_error(mlyard("rags", "create", "-f", str(spec)), "RAG 'handbook' already exists")
    assert _json("rags", "delete", "handbook") == {"deleted": "handbook"}
    _one_line_error(mlyard("rags", "show", "handbook"), "RAG 'handbook' not found")


def test_a_private_chat_endpoint_writes_the_answers_and_its_tokens_open_the_route(stack, platform, settings,
                                                                                 tiny_llm):
    """llm.endpoint: a private mlyard chat endpoint (the tiny model registered with task=chat) writes the
    answers, asked through the gateway (which counts those calls for it) with the platform's own token;
    token_endpoint: the RAG's route then takes that endpoint's tokens, as a bearer token or in
    x-nhn-apikey, and refuses a request without one before it reaches the query service."""
    import openai

    import mlyard.endpoints as endpoints
    from mlyard.core.connection import gateway_url

    platform.models.create_from_directory("ragchat", tiny_llm, "file://ragchat", parameters={"task": "chat"},
                                          framework="transformers")
    assert endpoints.create({"name": "asker", "stage": {"resources": [{"model": "ragchat/1"}]}})["status"] == "ACTIVE"
    try:
        token = endpoints.issue_token("asker", days=1)["token"]
        where = project("vault-docs")
        (where / "hours.txt").write_text("The vault opens at nine every morning and closes at five.\n")
        spec = where.parent / "vault.yaml"
        spec.write_text("name: vault\npath: vault-docs\ntoken_endpoint: asker\n"
                        "llm: {endpoint: asker, model: ragchat, max_tokens: 8, temperature: 0}\n")
        assert _json("rags", "create", "-f", str(spec), "--wait")["status"] == "ACTIVE"
        assert "asker" in _ok(mlyard("rags", "show", "vault"))
        _deployed("vault")
        gw = gateway_url(settings)
        ask = [{"role": "user", "content": "When does the vault open?"}]
        with pytest.raises(openai.AuthenticationError, match="not valid"):
            openai.OpenAI(base_url=f"{gw}/rag/v1", api_key="myd_wrong").chat.completions.create(model="vault",
                                                                                              messages=ask)
        answer = openai.OpenAI(base_url=f"{gw}/rag/v1", api_key=token).chat.completions.create(model="vault",
                                                                                              messages=ask)
        assert answer.choices[0].finish_reason in ("stop", "length")
        assert answer.model_extra["sources"][0]["file"] == "hours.txt"
        script = Path(__file__).resolve().parents[2] / "examples" / "rag" / "ask.sh"
        asked = shell("bash", str(script), "-u", f"{gw}/rag/v1/query", "-m", "vault", "-p", "When?", "-k", token)
        assert asked.returncode == 0 and len(asked.stdout) > 1 and not asked.stderr, (asked.stdout, asked.stderr)
        _run_seed_examples(f"{gw}/rag/v1/query", "vault", "When does the vault open?", key=token)
        refused = shell("bash", str(script), "-u", f"{gw}/rag/v1/query", "-m", "vault", "-p", "When?")
        assert refused.returncode == 1 and "needs a token" in refused.stderr, (refused.stdout, refused.stderr)
        streamed = _json("rags", "query", "vault", "When does it close?", "--token", token)
        assert streamed["sources"][0]["file"] == "hours.txt"
        assert settings.stack_file.stat().st_mode & 0o777 == 0o600  # it holds the platform's internal token
        asked = endpoints.stats("asker")["stats"]
        assert sum(r["calls"] for r in asked) >= 3, asked  # the RAG's LLM calls went through the gateway
        by_rag = [c for r in asked for c in r["callers"] if c["caller"] == "rag:vault"]  # under the RAG's name
        assert by_rag and by_rag[0]["calls"] >= 3 and by_rag[0]["tokens_out"] > 0 and by_rag[0]["tokens_in"] > 0, asked
        # a budget for the RAG on the endpoint holds it as any caller's: spent, its next query is refused
        _ok(mlyard("endpoints", "tokens", "budget", "asker", "rag:vault", "--daily-tokens", "1"))
        with pytest.raises(openai.APIStatusError, match="budget"):
            openai.OpenAI(base_url=f"{gw}/rag/v1", api_key=token).chat.completions.create(model="vault", messages=ask)
        assert len(_json("rags", "logs", "vault")) >= 3  # the refused ones never reached the query service
    finally:
        if any(r["name"] == "vault" for r in _json("rags", "list")):
            _json("rags", "delete", "vault")
        endpoints.delete("asker")


@pytest.fixture()
def outside_embeddings():
    """A stand-in for an outside OpenAI-compatible embeddings service (no other one runs offline): a real
    HTTP server on a free port whose vectors are hashed bags of words (64 dimensions). What it stands
    in for is only the far side; mlyard's side is the user's path. Yields (base URL, texts it embedded,
    a gate that holds documents' embeddings while it is cleared)."""
    import re
    import threading
    import zlib
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []
    gate = threading.Event()  # cleared: documents wait here (the one-text probe never does) until it is set
    gate.set()

    class Embeddings(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if self.path != "/v1/embeddings":
                self.send_error(404)
                return
            texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
            if texts != ["dimension probe"]:
                gate.wait(120)
            seen.extend(texts)
            data = []
            for i, text in enumerate(texts):
                v = [0.0] * 64
                for word in re.findall(r"[a-z]+", text.lower()):
                    v[zlib.crc32(word.encode()) % 64] += 1.0
                data.append({"object": "embedding", "index": i, "embedding": v})
            out = json.dumps({"object": "list", "model": body.get("model"), "data": data}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Embeddings)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen, gate
    gate.set()
    server.shutdown()
    server.server_close()


def test_an_outside_embeddings_service_embeds_documents_and_questions(stack, outside_embeddings):
    url, seen, gate = outside_embeddings
    folder = project("outside-docs")
    (folder / "library.txt").write_text("The library opens at eight and lends books for three weeks.\n")
    (folder / "parking.txt").write_text("Parking costs five euros per day in the north garage.\n")
    spec = folder.parent / "outside.yaml"
    spec.write_text(f"name: outside\npath: outside-docs\nembedding: {{url: '{url}', model: bow-64}}\n"
                    "llm: {base_url: 'http://127.0.0.1:9/v1'}\n")
    gate.clear()  # the creation waits on the documents' embeddings: it is in progress until the gate opens
    assert _json("rags", "create", "-f", str(spec))["status"] in ("CREATE REQUESTED", "CREATE IN PROGRESS")
    _one_line_error(mlyard("rags", "delete", "outside"), "being created or deleted cannot be deleted")
    gate.set()
    deadline = time.monotonic() + 120
    while (view := _view("outside"))["status"] != "ACTIVE" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert view["status"] == "ACTIVE" and view["store"]["chunks"] == 2, view
    assert any("library opens" in t for t in seen) and any("north garage" in t for t in seen)
    _deployed("outside")
    hits = _json("rags", "search", "outside", "When does the library open?")  # the question, embedded there too
    assert hits[0]["file"] == "library.txt" and "When does the library open?" in seen
    _json("rags", "delete", "outside")


def test_bad_specs_are_refused_in_one_line_before_anything_is_made(stack, tmp_path):
    spec = tmp_path / "r.yaml"
    spec.write_text("name: nowhere\npath: /no/such/folder\n")
    _one_line_error(mlyard("rags", "create", "-f", str(spec)), "/no/such/folder")
    spec.write_text(f"name: leaky\npath: {tmp_path}\nvector_store: {{kind: postgresql, "
                    "url: 'postgresql://u:hunter2@db:15432/v'}\n")
    line = _one_line_error(mlyard("rags", "create", "-f", str(spec)), "vector_store", "password_env")
    assert "hunter2" not in line
    spec.write_text(f"name: bad-prompt\npath: {tmp_path}\nprompt: 'no placeholders'\n")
    _one_line_error(mlyard("rags", "create", "-f", str(spec)), "prompt", "{context} and {question}")
    spec.write_text(f"name: far\npath: {tmp_path}\nvector_store: {{kind: postgresql, host: 127.0.0.1, port: 9}}\n")
    _one_line_error(mlyard("rags", "create", "-f", str(spec)), "vector_store", "a vector store that answers")
    spec.write_text(f"name: mute\npath: {tmp_path}\nembedding: {{url: 'http://127.0.0.1:9/v1'}}\n")
    _one_line_error(mlyard("rags", "create", "-f", str(spec)), "embedding.url", "cannot be reached")
    assert _json("rags", "list") == [] or all(r["name"] not in ("nowhere", "leaky", "bad-prompt", "far", "mute")
                                                for r in _json("rags", "list"))


def test_faults_an_llm_that_is_down_and_a_database_that_goes_away_mid_sync(stack, settings):
    """One RAG through both faults: its LLM is down (502 with the reason, never a hang), and once it is up
    its answer keeps only the citations it drew on; then its
    database goes away while a sync writes (UPDATE FAILED with the reason, no document half written),
    `mlyard up` starts it again, and the next sync resumes where the failed one stopped."""
    import os
    import signal
    import socket

    import psycopg
    import quality  # examples/rag, on the path through make_docs's folder

    from mlyard import stack as stack_mod

    with socket.socket() as s:  # a port nothing listens on: the LLM is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = project("flaky-docs")
    (folder / "a.md").write_text("The answer is forty-two.\n")
    spec = folder.parent / "flaky.yaml"
    spec.write_text(f"name: flaky\npath: flaky-docs\nllm: {{base_url: 'http://127.0.0.1:{port}/v1', model: x}}\n")
    assert _json("rags", "create", "-f", str(spec))["status"] in ("CREATE REQUESTED", "CREATE IN PROGRESS")
    deadline = time.monotonic() + 180
    while _view("flaky")["status"] != "ACTIVE" and time.monotonic() < deadline:
        time.sleep(0.5)
    _deployed("flaky")
    t0 = time.monotonic()
    line = _one_line_error(mlyard("rags", "query", "flaky", "What is the answer?"), "502", "cannot be reached")
    assert f"127.0.0.1:{port}" in line and time.monotonic() - t0 < 30
    last = _json("rags", "logs", "flaky", "--tail", "1")[0]  # logged with its reason
    assert last["logLevel"] == "ERROR" and last["body"].startswith("POST /v1/chat/completions 502"), last
    assert "cannot be reached" in last["body"]
    assert _json("rags", "search", "flaky", "What is the answer?")[0]["file"] == "a.md", "retrieval needs no LLM"

    # the LLM comes up (a stand-in that writes one claim its passage holds and one it does not, both cited):
    # a generated answer keeps only the citation of the passage it drew on, whole and streamed
    with _stand_in_llm(port, "The answer is forty-two [1]. The office opens at nine [1]."):
        for stream in ("--no-stream", "--stream"):
            answered = _json("rags", "query", "flaky", "What is the answer?", stream)
            assert answered["answer"] == "The answer is forty-two [1]. The office opens at nine.", answered
            assert answered["citations_removed"] == 1, answered

    # 30 more documents of the Python reference (about 2.4 kB each): a sync long enough to cut into after its
    # 10th document (the whole reference, 67, only made the test 20 s longer)
    (folder / "reference").mkdir()
    for name, text in list(quality.topics().items())[:30]:
        (folder / "reference" / f"{name}.md").write_text(text)
    _json("rags", "sync", "flaky")
    deadline = time.monotonic() + 240
    while (view := _view("flaky"))["store"].get("documents", 0) < 10 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert view["status"] == "UPDATE IN PROGRESS", view
    os.kill(stack.pids["postgres"], signal.SIGQUIT)  # PostgreSQL's immediate shutdown: the database goes away
    while _view("flaky")["status"] == "UPDATE IN PROGRESS" and time.monotonic() < deadline:
        time.sleep(0.5)
    view = _json("rags", "show", "flaky")
    assert view["status"] == "UPDATE FAILED" and "vector store" in view["reason"], view
    assert _json("rags", "history", "flaky")[0]["state"] == "FAILED"

    stack_mod.up(settings, echo=lambda *_: None)  # `mlyard up` starts what is not running: PostgreSQL again
    with psycopg.connect(stack_mod.read_state(settings).vector_store_url) as conn:
        rag_id = conn.execute("SELECT max(split_part(tablename, '_', 3)::int) FROM pg_tables "
                              "WHERE tablename LIKE 'mlyard_rag_%_docs'").fetchone()[0]
        written, = conn.execute(f"SELECT count(*) FROM mlyard_rag_{rag_id}_docs").fetchone()
        half = conn.execute(f"SELECT d.name FROM mlyard_rag_{rag_id}_docs d LEFT JOIN (SELECT doc, count(*) n FROM "
                            f"mlyard_rag_{rag_id}_chunks GROUP BY doc) c ON c.doc = d.name "
                            "WHERE coalesce(c.n, 0) <> d.chunks").fetchall()
    assert half == [], f"documents written in part: {half}"
    resumed = _json("rags", "sync", "flaky", "--wait")
    last = resumed["last_ingestion"]
    assert resumed["status"] == "ACTIVE" and resumed["store"]["documents"] == 31
    assert last["added"] == 31 - written and last["unchanged"] == written, (last, written)
    _json("rags", "delete", "flaky")


@contextlib.contextmanager
def _stand_in_llm(port: int, answer: str):
    """An OpenAI-compatible chat route on 127.0.0.1:`port` that always answers `answer` (whole, or streamed
    three characters at a time): a stand-in for an outside LLM, which cannot run offline."""
    import http.server
    import threading

    class Chat(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            head = {"id": "chatcmpl-1", "created": 0, "model": body["model"]}
            if not body.get("stream"):
                out = json.dumps({**head, "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out.encode())
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            for i in range(0, len(answer), 3):
                chunk = {**head, "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": {"content": answer[i:i + 3]}, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Chat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
