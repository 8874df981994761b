"""The default ONNX embedder (tasks/embedding_onnx.py) with onnxruntime's intra-op threads spinning
while they wait (onnxruntime's default) and sleeping (mlyard's setting), alternating in one run: CPU
and wall time to embed the RAG quality reference's chunks (examples/rag/quality.py, as the RAG
quality test embeds them), alone and beside a process that keeps one core busy (a shared machine).

    python bench/embedding_spin.py [--chunks 400]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "rag"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=400)
    args = parser.parse_args()
    import onnxruntime as ort
    import quality

    from mlyard.core.specs.rag import RagSpec
    from mlyard.tasks.documents import chunk, parse
    from mlyard.tasks.embeddings import embedder, tokenizer_for

    folder = Path(tempfile.mkdtemp())
    spec = RagSpec(name="spin", path=str(folder))
    tok, model = tokenizer_for(spec.embedding), embedder(spec.embedding)
    texts = [c.text for path in quality.write(folder)
             for c in chunk(parse(path.read_bytes(), path.name), tok, spec.chunk_tokens, spec.chunk_overlap)]
    texts = texts[:args.chunks]
    print(f"{len(texts)} chunks, {type(model).__name__}")
    for neighbour in (False, True):
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if neighbour else None
        try:
            for spin in ("1", "0", "1", "0"):
                options = ort.SessionOptions()
                options.inter_op_num_threads, options.log_severity_level = 1, 3
                options.add_session_config_entry("session.intra_op.allow_spinning", spin)
                model.session = ort.InferenceSession(model.session._model_path, options,  # type: ignore[attr-defined]
                                                     providers=["CPUExecutionProvider"])
                began, before = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
                model.encode(texts)
                after = resource.getrusage(resource.RUSAGE_SELF)
                cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
                print(f"{'beside a busy core' if neighbour else 'alone':18} spinning {'on ' if spin == '1' else 'off'}: "
                      f"{time.monotonic() - began:5.1f} s, {cpu:5.1f} CPU-s", flush=True)
        finally:
            if busy is not None:
                busy.kill()


if __name__ == "__main__":
    main()
