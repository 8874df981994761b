"""Documents for RAG ingestion: which files are taken (the seed's formats and limits), their text with
where it came from (page, sheet, slide) for citations, and chunks of it cut by tokens with overlap.

- `select(entries)` — the files under an ingestion path that are taken, and those skipped with the
  reason (an unsupported format, a file over its format's limit, a name that cannot be stored, past
  the 1,000,000-file or 100 GB total). A skipped file never fails the ingestion.
- `parse(path, name)` — the text of one file as sections, each with its place (`page 3`, `sheet
  Sales`, `slide 2`, or none); a DocumentError naming the file and the reason otherwise (corrupt,
  encrypted, empty, no text, a missing tool).
- `chunk(sections, tokenizer)` — windows of `size` tokens overlapping by `overlap`, cut on the
  embedding model's own tokenizer so that no chunk is longer than the model reads.

Plain functions (no Prefect): flows/rag.py calls them through tasks/rag.py.
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import subprocess
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

from mlyard.core.errors import DocumentError

MB = 1024 * 1024
LIMITS = {  # the seed's formats and the largest file of each
    ".txt": 3 * MB, ".text": 3 * MB, ".md": 3 * MB,
    ".doc": 50 * MB, ".docx": 50 * MB, ".pdf": 50 * MB,
    ".csv": 3 * MB, ".xls": 3 * MB, ".xlsx": 3 * MB,
    ".ppt": 50 * MB, ".pptx": 50 * MB,
}
MAX_FILES = 1_000_000
MAX_TOTAL_BYTES = 100 * 1024 ** 3
MAX_NAME_BYTES = 1024


@dataclass(frozen=True)
class Entry:
    """A file under the ingestion path: its name relative to it and its size."""

    name: str
    size: int


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


@dataclass(frozen=True)
class Section:
    text: str
    where: str = ""  # "page 3", "sheet Sales", "slide 2", "" for a plain text file


@dataclass(frozen=True)
class Chunk:
    text: str
    where: str
    index: int  # its place in the document, from 0


def _human(n: int) -> str:
    return f"{n / MB:.1f} MB" if n < 1024 ** 3 else f"{n / 1024 ** 3:.1f} GB"


def name_problem(name: str) -> str | None:
    """Why a file name cannot be stored and cited as it is, or None."""
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in name):
        return "its name holds control or invisible characters; rename it"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"its name is longer than {MAX_NAME_BYTES} bytes; shorten it"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8; rename it"
    return None


def select(entries: Iterable[Entry]) -> tuple[list[Entry], list[Skipped]]:
    """The files to ingest, in name order, and the files skipped with the reason."""
    taken: list[Entry] = []
    skipped: list[Skipped] = []
    total = 0
    for e in sorted(entries, key=lambda e: e.name):
        ext = Path(e.name).suffix.lower()
        limit = LIMITS.get(ext)
        problem = name_problem(e.name)
        if problem:
            skipped.append(Skipped(e.name, problem))
        elif limit is None:
            skipped.append(Skipped(e.name, f"{ext or 'no extension'} is not a supported format "
                                           f"({' '.join(sorted(LIMITS))})"))
        elif e.size == 0:
            skipped.append(Skipped(e.name, "the file is empty"))
        elif e.size > limit:
            skipped.append(Skipped(e.name, f"{_human(e.size)} is over the {_human(limit)} limit of {ext} files"))
        elif len(taken) >= MAX_FILES:
            skipped.append(Skipped(e.name, f"past the limit of {MAX_FILES:,} files per RAG"))
        elif total + e.size > MAX_TOTAL_BYTES:
            skipped.append(Skipped(e.name, f"past the limit of {_human(MAX_TOTAL_BYTES)} per RAG"))
        else:
            taken.append(e)
            total += e.size
    return taken, skipped


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- parsing ---------------------------------------------------------------------------------------


def parse(data: bytes, name: str) -> list[Section]:
    """The text of the file `name` (its bytes), as sections with their places. Raises DocumentError."""
    ext = Path(name).suffix.lower()
    reader = _READERS.get(ext)
    if reader is None:
        raise DocumentError(name, f"{ext or 'no extension'} is not a supported format")
    if not data:
        raise DocumentError(name, "the file is empty")
    try:
        sections = reader(data, name)
    except DocumentError:
        raise
    except Exception as exc:  # noqa: BLE001 - each parser has its own errors; all mean "cannot read it"
        raise DocumentError(name, f"cannot be read as {ext} ({type(exc).__name__}: {_first_line(exc)}); "
                                  "is it corrupt or another format?") from exc
    sections = [Section(_clean(s.text), s.where) for s in sections]
    sections = [s for s in sections if s.text]
    if not sections:
        raise DocumentError(name, "no text could be extracted (a scanned document? ingest its text instead)")
    return sections


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else "no detail"


def _clean(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.replace("\x00", "").splitlines()]
    out: list[str] = []
    for line in lines:  # at most one blank line in a row
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


def _text(data: bytes, name: str) -> list[Section]:
    for encoding in ("utf-8-sig", "cp949", "latin-1"):
        try:
            return [Section(data.decode(encoding))]
        except UnicodeDecodeError:
            continue
    raise DocumentError(name, "not text in UTF-8")  # pragma: no cover - latin-1 decodes anything


def _csv(data: bytes, name: str) -> list[Section]:
    (section,) = _text(data, name)
    rows = list(csv.reader(io.StringIO(section.text)))
    return [Section("\n".join(", ".join(cell.strip() for cell in row if cell.strip()) for row in rows))]


def _pdf(data: bytes, name: str) -> list[Section]:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        try:  # an owner password only (no password to open it) still opens
            if not reader.decrypt(""):
                raise DocumentError(name, "the PDF is encrypted with a password; ingest an unlocked copy")
        except DocumentError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise DocumentError(name, "the PDF is encrypted with a password; ingest an unlocked copy") from exc
    return [Section(page.extract_text() or "", f"page {i}") for i, page in enumerate(reader.pages, 1)]


def _zip_check(data: bytes, name: str, what: str) -> None:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise DocumentError(name, f"not a valid {what} file (an Office file is a zip archive; this one is "
                                  "corrupt or another format)")


def _docx(data: bytes, name: str) -> list[Section]:
    _zip_check(data, name, ".docx")
    import docx

    d = docx.Document(io.BytesIO(data))
    parts = [p.text for p in d.paragraphs]
    for table in d.tables:
        for row in table.rows:
            parts.append(", ".join(c.text.strip() for c in row.cells if c.text.strip()))
    return [Section("\n".join(parts))]


def _xlsx(data: bytes, name: str) -> list[Section]:
    _zip_check(data, name, ".xlsx")
    import openpyxl

    wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        return [Section(_rows(ws.iter_rows(values_only=True)), f"sheet {ws.title}") for ws in wb.worksheets]
    finally:
        wb.close()


def _xls(data: bytes, name: str) -> list[Section]:
    import xlrd

    book = xlrd.open_workbook(file_contents=data)
    return [Section(_rows([c.value for c in row] for row in sh.get_rows()), f"sheet {sh.name}") for sh in book.sheets()]


def _rows(rows: Any) -> str:
    return "\n".join(", ".join(str(v) for v in row if v not in (None, "")) for row in rows)


def _pptx(data: bytes, name: str) -> list[Section]:
    _zip_check(data, name, ".pptx")
    from pptx import Presentation

    deck = Presentation(io.BytesIO(data))
    out = []
    for i, slide in enumerate(deck.slides, 1):
        texts = [shape.text_frame.text for shape in slide.shapes if shape.has_text_frame]
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            texts.append(slide.notes_slide.notes_text_frame.text)
        out.append(Section("\n".join(texts), f"slide {i}"))
    return out


def _legacy(tool: str, package: str) -> Any:
    """.doc and .ppt: the Debian catdoc package's catdoc and catppt read them."""

    def read(data: bytes, name: str) -> list[Section]:
        exe = shutil.which(tool)
        if exe is None:
            raise DocumentError(name, f"reading {Path(name).suffix} files needs {tool} (Debian package {package}: "
                                      f"apt-get install {package}), which is not installed")
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=Path(name).suffix) as fh:
            fh.write(data)
            fh.flush()
            proc = subprocess.run([exe, "-d", "utf-8", fh.name], capture_output=True, timeout=120)
        if proc.returncode != 0:
            raise DocumentError(name, f"{tool} could not read it ({proc.stderr.decode(errors='replace').strip()[:200]}); "
                                      "is it corrupt?")
        return [Section(proc.stdout.decode("utf-8", errors="replace"))]

    return read


_READERS = {".txt": _text, ".text": _text, ".md": _text, ".csv": _csv, ".pdf": _pdf, ".docx": _docx,
            ".xlsx": _xlsx, ".xls": _xls, ".pptx": _pptx, ".doc": _legacy("catdoc", "catdoc"),
            ".ppt": _legacy("catppt", "catdoc")}


# -- chunking --------------------------------------------------------------------------------------


class Tokenizer(Protocol):
    def offsets(self, text: str) -> list[tuple[int, int]]:
        """The character span of each token of `text`, special tokens left out."""


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer read from a model folder's tokenizer.json (no torch)."""

    def __init__(self, tokenizer_json: Path):
        from tokenizers import Tokenizer as _Tok

        self._tok = _Tok.from_file(str(tokenizer_json))
        self._tok.no_truncation()
        self._tok.no_padding()

    def offsets(self, text: str) -> list[tuple[int, int]]:
        enc = self._tok.encode(text, add_special_tokens=False)
        return [tuple(o) for o in enc.offsets]  # type: ignore[misc]


def chunk(sections: list[Section], tokenizer: Tokenizer, size: int = 200, overlap: int = 40) -> list[Chunk]:
    """Windows of `size` tokens, each starting `size - overlap` tokens after the previous one, cut at
    token boundaries within each section (a chunk never spans two pages, sheets or slides)."""
    if not 0 <= overlap < size:
        raise ValueError(f"overlap {overlap} must be at least 0 and less than size {size}")
    out: list[Chunk] = []
    for section in sections:
        spans = tokenizer.offsets(section.text)
        if not spans:
            continue
        start = 0
        while True:
            window = spans[start:start + size]
            text = section.text[window[0][0]:window[-1][1]].strip()
            if text:
                out.append(Chunk(text, section.where, len(out)))
            if start + size >= len(spans):
                break
            start += size - overlap
    return out
