"""RAGs on the running platform, as users reach them: the CLI in fresh processes creates a RAG over a
folder of mixed documents (ingested by a flow run of rag-sync/local on the real worker into the real
embedded PostgreSQL + pgvector, embedded by the offline all-MiniLM-L6-v2), syncs after a change,
shows the history, searches, and deletes it; and the rules and bad input."""

import json
import sys
from pathlib import Path

from test_user_paths import _ok, _one_line_error, mlyard, project

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "rag"))
import make_docs  # noqa: E402


def _json(*args: str):
    return json.loads(_ok(mlyard(*args, "--json")))


def test_create_sync_history_search_and_delete(stack, tmp_path):
    where = project("rag-docs")
    make_docs.write(where)
    (where / "tool.exe").write_bytes(b"MZ")
    (where / "broken.pdf").write_bytes(b"%PDF-1.4 truncated")
    spec = where.parent / "rag.yaml"
    spec.write_text("name: handbook\npath: rag-docs\ndescription: the Yardstick handbook\ntop_k: 3\n")

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
    assert "legacy API" in _json("rags", "search", "handbook", "What does version 5.0 drop?")[0]["text"]

    listed = _json("rags", "list")
    assert [(r["name"], r["status"]) for r in listed] == [("handbook", "ACTIVE")]
    _one_line_error(mlyard("rags", "create", "-f", str(spec)), "RAG 'handbook' already exists")
    assert _json("rags", "delete", "handbook") == {"deleted": "handbook"}
    _one_line_error(mlyard("rags", "show", "handbook"), "RAG 'handbook' not found")


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
    assert _json("rags", "list") == [] or all(r["name"] not in ("nowhere", "leaky", "bad-prompt", "far")
                                                for r in _json("rags", "list"))
