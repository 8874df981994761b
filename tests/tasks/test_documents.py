"""Documents for RAG ingestion, read by the real parsers (pypdf, python-docx, openpyxl, python-pptx) from
real files the example generator writes, and the bad ones a user meets: corrupt, encrypted, empty,
textless, oversized, unsupported, oddly named."""

import io
import sys
from pathlib import Path

import pytest

from mlyard.core.errors import DocumentError
from mlyard.tasks.documents import MB, Entry, HFTokenizer, Section, chunk, parse, select
from mlyard.tasks.embeddings import default_model_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "rag"))
import make_docs  # noqa: E402


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    return {p.name: p for p in make_docs.write(tmp_path_factory.mktemp("docs"))}


@pytest.fixture(scope="module")
def tokenizer():
    return HFTokenizer(default_model_dir() / "tokenizer.json")


def test_every_format_is_read_with_its_places(docs):
    got = {name: parse(p.read_bytes(), name) for name, p in docs.items()}
    assert [s.where for s in got["security.pdf"]] == ["page 1", "page 2"]
    assert "AES-256" in got["security.pdf"][1].text
    assert [s.where for s in got["roadmap.pptx"]] == ["slide 1", "slide 2"] and "mobile app" in got["roadmap.pptx"][1].text
    assert got["limits.xlsx"][0].where == "sheet Limits" and "projects per account, 20" in got["limits.xlsx"][0].text
    assert "4 business hours" in got["support.docx"][0].text
    assert "team, 49 dollars, 25" in got["prices.csv"][0].text
    assert got["guide.md"][0].where == "" and "90 days" in got["guide.md"][0].text


def test_bad_files_name_the_file_and_the_reason(docs):
    pdf = docs["security.pdf"].read_bytes()
    with pytest.raises(DocumentError, match=r"broken\.pdf: cannot be read as \.pdf"):
        parse(pdf[: len(pdf) // 3], "broken.pdf")
    with pytest.raises(DocumentError, match=r"fake\.docx: not a valid \.docx file"):
        parse(b"this is not a zip", "fake.docx")
    with pytest.raises(DocumentError, match=r"fake\.pptx: not a valid \.pptx"):
        parse(b"PK\x03\x04 broken zip", "fake.pptx")
    with pytest.raises(DocumentError, match="empty"):
        parse(b"", "empty.txt")
    with pytest.raises(DocumentError, match="no text could be extracted"):
        parse(make_docs.minimal_pdf([""]), "blank.pdf")
    with pytest.raises(DocumentError, match="not a supported format"):
        parse(b"MZ", "setup.exe")


def test_an_encrypted_pdf_is_refused_with_what_to_do(docs):
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(docs["security.pdf"]).pages:
        writer.add_page(page)
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    with pytest.raises(DocumentError, match=r"locked\.pdf: the PDF is encrypted with a password; ingest an unlocked copy"):
        parse(buf.getvalue(), "locked.pdf")


def test_legacy_word_and_powerpoint_files_are_read_with_catdoc():
    """Real Word 97-2003 and PowerPoint 97-2003 files (tests/tasks/data/README.md says where from), read
    by the Debian package catdoc that `make install` installs."""
    data = Path(__file__).parent / "data"
    doc = parse((data / "word97.doc").read_bytes(), "word97.doc")
    assert "Test OLE file, saved as Word 97-2003 Document." in " ".join(s.text for s in doc)
    ppt = parse((data / "powerpoint97.ppt").read_bytes(), "powerpoint97.ppt")
    assert "Test" in " ".join(s.text for s in ppt)
    with pytest.raises(DocumentError, match=r"broken\.doc: catdoc could not read it"):
        parse(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 100, "broken.doc")


def test_legacy_office_files_need_catdoc_and_say_so(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)  # as on a machine without the Debian package
    with pytest.raises(DocumentError, match=r"old\.doc: reading \.doc files needs catdoc \(Debian package catdoc"):
        parse(b"\xd0\xcf\x11\xe0 not really", "old.doc")


def test_select_skips_with_the_reason_and_never_fails():
    taken, skipped = select([
        Entry("a.md", 10), Entry("big.md", int(3.1 * MB)), Entry("tool.exe", 10), Entry("deck.pptx", 49 * MB),
        Entry("odd\x07name.txt", 5), Entry("empty.txt", 0), Entry("한글 문서.txt", 8), Entry("README", 4),
    ])
    assert [e.name for e in taken] == ["a.md", "deck.pptx", "한글 문서.txt"]
    why = {s.name: s.reason for s in skipped}
    assert why["big.md"] == "3.1 MB is over the 3.0 MB limit of .md files"
    assert ".exe is not a supported format" in why["tool.exe"]
    assert "control or invisible characters" in why["odd\x07name.txt"]
    assert why["empty.txt"] == "the file is empty" and "no extension" in why["README"]


def test_chunks_follow_the_tokenizer_with_overlap_and_keep_their_place(tokenizer):
    words = " ".join(f"word{i}" for i in range(300))
    chunks = chunk([Section(words, "page 7"), Section("short", "page 8")], tokenizer, size=50, overlap=10)
    assert all(c.where == "page 7" for c in chunks[:-1]) and chunks[-1].where == "page 8"
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for a, b in zip(chunks, chunks[1:-1]):
        assert len(tokenizer.offsets(a.text)) <= 50
        assert a.text.split()[-1] in b.text, "consecutive chunks overlap"
    with pytest.raises(ValueError, match="overlap 50 must be"):
        chunk([Section("x")], tokenizer, size=50, overlap=50)


def test_documents_listed_and_read_from_s3_as_from_a_folder(s3_settings, bucket, docs):
    """An ingestion path on a real S3 API (moto's server on 127.0.0.1): the same files, sizes and limits."""
    from mlyard.tasks.rag import list_documents
    from mlyard.tasks.storage import Storage

    storage = Storage(s3_settings)
    for name, path in docs.items():
        storage.write_bytes(f"s3://{bucket}/handbook/{name}", path.read_bytes())
    storage.write_bytes(f"s3://{bucket}/handbook/tool.exe", b"MZ")
    listing = list_documents(storage, f"s3://{bucket}/handbook")
    assert sorted(e.name for e in listing.taken) == sorted(docs)
    assert [(s.name, "not a supported format" in s.reason) for s in listing.skipped] == [("tool.exe", True)]
    pdf = storage.read_bytes(listing.uris["security.pdf"])
    assert [s.where for s in parse(pdf, "security.pdf")] == ["page 1", "page 2"]
    # an object's stamp is its size and ETag: the same content written again keeps it, other content not
    stamp = listing.stamps["notes.txt"]
    storage.write_bytes(f"s3://{bucket}/handbook/notes.txt", docs["notes.txt"].read_bytes())
    assert list_documents(storage, f"s3://{bucket}/handbook").stamps["notes.txt"] == stamp
    storage.write_bytes(f"s3://{bucket}/handbook/notes.txt", b"other text")
    assert list_documents(storage, f"s3://{bucket}/handbook").stamps["notes.txt"] != stamp
