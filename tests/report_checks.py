"""Checks shared by the render tests of the model, attack and pipeline reports."""

from __future__ import annotations

import re
import shutil
import subprocess

from lstm_adv.reports import report_files
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
