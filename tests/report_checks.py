"""Checks shared by the render tests of the reports: self-contained HTML, leaks, PDF pages, table layout."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import attrs
import nbformat

from lstm_adv.rendering import TYPST_HEADER, document_settings, notebook_to_markdown, write_typst
from lstm_adv.reports import find_reports_dir, report_files
from lstm_adv.results.store import Run
from tests.test_reports import cohort_ids, cohort_times, leaked, visible_text


def external_references(html: str) -> list[str]:
    """Every src/href that is neither a data URI nor an in-page anchor."""
    return re.findall(r"""(?:src|href)\s*=\s*["']?(?!data:|#)([^"'\s>]+)""", html)


def embedded_images(html: str) -> int:
    """Number of PNG images embedded as data URIs."""
    return len(re.findall(r'<img[^>]+src="data:image/png;base64,', html))


def pdf_pages(report: Run) -> int:
    """Number of pages of the report's PDF."""
    data = report_files(report)[1].read_bytes()
    assert data.startswith(b"%PDF")
    return len(re.findall(rb"/Type\s*/Page(?!s)", data))


def leaks(report: Run, query: Run, document: str) -> list[str]:
    """Cohort ids and dates found in the report's HTML, notebook and (with pdftotext) PDF text."""
    needles = cohort_ids(query) | cohort_times(query)
    html, pdf = report_files(report)
    found = leaked(visible_text(html.read_text(encoding="utf-8")), needles)
    found += leaked(visible_text(report.file(f"{document}.ipynb").read_text(encoding="utf-8")), needles)
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
        found += leaked(text, needles)
    return found


# --- table layout ------------------------------------------------------------------------------------

# Typst measures every table of the PDF path: per cell its natural (one-line) width and its widest word.
# The renderer sets tables without hyphenation, so a column narrower than its widest word overprints its
# neighbour (or, hyphenated, splits a header): what these checks catch.
_MEASURE = r"""
#let lstm-plain(c) = {
  if type(c) == str { c }
  else if c == [ ] { " " }
  else if c.has("text") { lstm-plain(c.text) }
  else if c.has("children") { c.children.fold("", (all, x) => all + lstm-plain(x)) }
  else if c.has("body") { lstm-plain(c.body) }
  else if c.has("child") { lstm-plain(c.child) }
  else { " " }
}
#show table: it => layout(size => {
  let cells = ()
  for child in it.children {
    if child.func() == table.header { cells += child.children }
    else if child.func() != table.hline { cells.push(child) }
  }
  let ncols = if type(it.columns) == int { it.columns } else { it.columns.len() }
  let measured = cells.map(c => {
    let body = if c.func() == table.cell { c.body } else { c }
    let words = lstm-plain(body).split(regex("\s+")).filter(w => w != "")
    (measure(body).width.pt(), calc.max(0pt, ..words.map(w => measure(w).width)).pt(), lstm-plain(body))
  })
  [#metadata((columns: ncols, available: size.width.pt(), cells: measured)) <lstm-adv-table>]
  it
})
"""
TYPST_INSET_PT = 10.0  # typst's default cell inset, 5 pt on either side
HTML_PX_PER_PT = 1.9  # 9 pt serif in the PDF → the HTML's 0.92 em sans-serif (≈ 14.7 px, wider glyphs)
HTML_PADDING_PX = 23.6  # 0.8 em either side (styles.css)
HTML_LIMIT_PX = 1100


@attrs.frozen
class TableLayout:
    """One table as typst lays it out: per column its header, natural width and widest word (pt, with inset)."""

    headers: tuple[str, ...]
    natural: tuple[float, ...]
    widest_word: tuple[float, ...]
    available: float

    def widths(self) -> list[float]:
        """Column widths after typst shrinks auto columns that do not fit: every column wider than a fair share
        of what the narrower ones leave is cut to that share."""
        widths, remaining, overlarge, fair, last = list(self.natural), self.available, len(self.natural), 0.0, -1.0
        if sum(widths) <= self.available:
            return widths
        changed = True
        while changed and overlarge > 0:
            changed, last, fair = False, fair, remaining / overlarge
            for width in self.natural:
                if last < width <= fair:
                    remaining, overlarge, changed = remaining - width, overlarge - 1, True
        return [min(width, fair) for width in widths]

    def squeezed(self) -> list[str]:
        """Columns whose width is less than their widest word: text that overprints or breaks inside a word."""
        return [
            f"column {header!r} of the table ({', '.join(self.headers)}) gets {got:.0f} pt; its widest word needs "
            f"{need:.0f} pt"
            for header, got, need in zip(self.headers, self.widths(), self.widest_word, strict=True)
            if got + 0.5 < need
        ]

    def html_min_width(self) -> float:
        """An estimate (px) of the narrowest the HTML table can get: each column's widest word plus padding."""
        return sum((word - TYPST_INSET_PT) * HTML_PX_PER_PT + HTML_PADDING_PX for word in self.widest_word)


def table_layouts(notebook_file: Path, document: str) -> list[TableLayout]:
    """Every table of the PDF path of an executed report notebook, measured by typst (rendered again)."""
    import typst

    notebook = nbformat.read(notebook_file, as_version=4)
    settings = document_settings(find_reports_dir() / f"{document}.qmd")
    with tempfile.TemporaryDirectory(prefix="lstm-adv-layout-") as tmp:
        work = Path(tmp)
        (work / "report.md").write_text(notebook_to_markdown(notebook, settings, work, origin=document), "utf-8")
        source = write_typst(work, header=TYPST_HEADER + _MEASURE)
        found = json.loads(typst.query(str(source), "<lstm-adv-table>", field="value", root=str(work)))
    return [_layout(table) for table in found]


def _layout(table: dict[str, Any]) -> TableLayout:
    n = int(table["columns"])
    natural, widest, headers = [0.0] * n, [0.0] * n, [""] * n
    for index, (width, word, text) in enumerate(table["cells"]):
        column = index % n
        natural[column] = max(natural[column], width + TYPST_INSET_PT)
        widest[column] = max(widest[column], word + TYPST_INSET_PT)
        if index < n:
            headers[column] = text
    return TableLayout(tuple(headers), tuple(natural), tuple(widest), float(table["available"]))


def layout_problems(report: Run, document: str) -> list[str]:
    """Tables of the PDF that overprint (a column narrower than a word) or of the HTML wider than 1,100 px."""
    problems = []
    for layout in table_layouts(report.file(f"{document}.ipynb"), document):
        problems += layout.squeezed()
        if layout.html_min_width() > HTML_LIMIT_PX:
            problems.append(f"the table ({', '.join(layout.headers)}) needs ≈ {layout.html_min_width():.0f} px in HTML")
    return problems


def raw_column_names(html: str) -> list[str]:
    """Table headers that are raw snake_case column names (``success_rate``) instead of words."""
    return re.findall(r"<th[^>]*>\s*([a-z0-9]+_[a-z0-9_]+)\s*</th>", html)
