"""Retrieval quality as a regression test: Python's own language reference (pydoc_data, shipped with
the interpreter) chunked, embedded by the offline all-MiniLM-L6-v2 and stored in the real embedded
PostgreSQL + pgvector, then 25 questions with a known answer topic (examples/rag/quality.py). The
floors sit a little under what this pipeline measured when written (hit rate@5 0.96, MRR 0.89 on the
reference pages up to 14,000 characters; bench/rag.py and the closing note have the figures), so a
change that makes retrieval worse fails here."""

import sys
from pathlib import Path

from mlyard.core.specs.rag import RagSpec
from mlyard.tasks.documents import chunk, parse
from mlyard.tasks.embeddings import embedder, tokenizer_for
from mlyard.tasks.vectorstore import VectorStore

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "rag"))
import quality  # noqa: E402


def test_hit_rate_and_mrr_on_the_python_reference(stack, tmp_path):
    spec = RagSpec(name="quality", path=str(tmp_path))
    model, tok = embedder(spec.embedding), tokenizer_for(spec.embedding)
    store = VectorStore(stack.vector_store_url, 999_001)
    store.ensure(model.dim)
    try:
        for path in quality.write(tmp_path):
            chunks = chunk(parse(path.read_bytes(), path.name), tok, spec.chunk_tokens, spec.chunk_overlap)
            store.put(path.name, "h", [(c.index, c.where, c.text) for c in chunks], model.encode([c.text for c in chunks]))
        ranked = [[h.doc for h in store.search(model.encode([q])[0], 10)] for q, _ in quality.QUESTIONS]
    finally:
        store.drop()
        store.close()
    hit5, mrr = quality.score(ranked)
    print(f"hit rate@5 {hit5:.2f}, MRR {mrr:.2f}")
    assert hit5 >= 0.88 and mrr >= 0.7, (hit5, mrr)
