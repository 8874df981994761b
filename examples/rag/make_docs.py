"""Write a small folder of mixed documents (txt, md, csv, pdf, docx, xlsx, pptx) about a made-up
product, for the RAG demo and tests: `python examples/rag/make_docs.py DIR`. Every fact appears in
exactly one file, so a question has one right source."""

from __future__ import annotations

import sys
from pathlib import Path

FACTS = {
    "guide.md": ("# Yardstick handbook\n\n## Tokens\n\nAn API token of Yardstick expires after 90 days. Rotate a "
                 "token with the `yard token rotate` command; the old token keeps working for one hour.\n\n"
                 "## Regions\n\nYardstick runs in the regions kr1 and kr2. Data never leaves its region.\n"),
    "notes.txt": "Yardstick release notes. Version 4.2 added streaming answers. Version 4.1 made uploads resumable; "
                 "an interrupted upload continues where it stopped.\n",
    "prices.csv": "plan,monthly price,seats\nstarter,9 dollars,3\nteam,49 dollars,25\n",
}


def minimal_pdf(pages: list[str]) -> bytes:
    """A PDF with one line of Helvetica text per page (the standard font needs nothing embedded)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    for text in pages:
        content = f"BT /F1 12 Tf 72 720 Td ({text.replace('(', '[').replace(')', ']')}) Tj ET".encode()
        objects.append(f"<< /Length {len(content)} >>\nstream\n{content.decode()}\nendstream")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objects)} 0 R "
                       "/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>")
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def write(folder: Path) -> list[Path]:
    import docx
    import openpyxl
    from pptx import Presentation

    folder.mkdir(parents=True, exist_ok=True)
    for name, text in FACTS.items():
        (folder / name).write_text(text)
    (folder / "security.pdf").write_bytes(minimal_pdf([
        "Yardstick security overview.",
        "Backups of Yardstick are encrypted with AES-256 and kept for 35 days.",
    ]))
    d = docx.Document()
    d.add_heading("Yardstick support policy", 1)
    d.add_paragraph("Support tickets of the team plan are answered within 4 business hours.")
    d.save(folder / "support.docx")
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Limits"
    ws.append(["resource", "limit"])
    ws.append(["projects per account", 20])
    ws.append(["file upload size", "2 GB"])
    wb.save(folder / "limits.xlsx")
    deck = Presentation()
    for title, body in [("Yardstick roadmap", "Where the product goes next."),
                        ("Next quarter", "Yardstick will add a mobile app in the third quarter.")]:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    deck.save(folder / "roadmap.pptx")
    return sorted(folder.iterdir())


if __name__ == "__main__":
    for p in write(Path(sys.argv[1] if len(sys.argv) > 1 else "rag-docs")):
        print(p)
