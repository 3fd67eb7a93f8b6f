"""Report stage: render the Quarto document of a run's kind to self-contained HTML and a PDF.

Documents live in ``reports/`` (one ``.qmd`` per run kind, see :data:`DOCUMENTS`); each takes
``run_id`` (and ``home``) in a cell tagged ``parameters`` and only reads stored aggregates through
:mod:`lstm_adv.results.api`. :mod:`lstm_adv.rendering` renders them (with Quarto, or offline).
The rendered files are stored as a run of kind ``report`` whose parent is the reported run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lstm_adv.domain.errors import ReportError
from lstm_adv.rendering import ENGINES, markdown_table, render_document
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import ReportSummary

log = logging.getLogger(__name__)

__all__ = ["DOCUMENTS", "ENGINES", "PIPELINE", "markdown_table", "render_report", "report_files"]

#: Run kind → document (``reports/<document>.qmd``). Later stages add their kinds here.
DOCUMENTS: dict[str, str] = {
    "query": "data",
    "features": "data",
    "model": "model",
    "attack": "attack",
    "analysis": "attack",
    "robustness": "robustness",
    "tune-model": "tuning",
    "tune-attack": "tuning",
}
#: The document of a whole pipeline, rendered for its last run (``render_report(run, document=PIPELINE)``).
PIPELINE = "pipeline"
REPORTS_ENV = "LSTM_ADV_REPORTS"


def document_for(kind: str) -> str:
    """The document (stem under ``reports/``) that reports runs of ``kind``."""
    if kind not in DOCUMENTS:
        kinds = ", ".join(sorted(DOCUMENTS))
        raise ReportError(f"there is no report for {kind} runs yet; reports exist for runs of kind {kinds}")
    return DOCUMENTS[kind]


def find_reports_dir(explicit: Path | None = None) -> Path:
    """The folder of the ``.qmd`` documents: ``explicit``, ``$LSTM_ADV_REPORTS``, or the checkout's ``reports/``."""
    candidates = [explicit] if explicit else []
    if os.environ.get(REPORTS_ENV):
        candidates.append(Path(os.environ[REPORTS_ENV]))
    candidates += [Path(__file__).parent / "_reports", Path(__file__).resolve().parents[1] / "reports"]
    # _reports: where a wheel may ship the documents; reports/: the source checkout (editable installs)
    for folder in candidates:
        if folder is not None and (folder / "_quarto.yml").is_file():
            return folder
    raise ReportError(
        "cannot find the report documents (a folder with _quarto.yml); "
        f"pass --reports <folder> or set ${REPORTS_ENV} to the project's reports/ folder"
    )


def render_report(
    run: Run,
    *,
    store: RunStore,
    home: Path,
    reports_dir: Path | None = None,
    engine: str = "auto",
    timeout_s: int = 600,
    document: str | None = None,
) -> Run:
    """Render the document of ``run``'s kind and store HTML, PDF and executed notebook as a ``report`` run.

    ``document`` picks another document, e.g. :data:`PIPELINE` for the whole pipeline that ends in ``run``.
    """
    document = document or document_for(run.kind)
    qmd = find_reports_dir(reports_dir) / f"{document}.qmd"
    if not qmd.is_file():
        raise ReportError(f"report document {qmd} is missing; restore it from the project's reports/ folder")
    params = {"run_id": str(run.id), "home": str(home)}
    with store.create("report", parents=[run.id]) as writer:
        rendered = render_document(qmd, params, writer.path, engine=engine, timeout_s=timeout_s)
        files = tuple(p.name for p in (rendered.html, rendered.pdf, rendered.notebook) if p is not None)
        writer.summary = ReportSummary(
            document=document, reported=run.id, kind=run.kind, engine=rendered.engine, files=files
        )
        report = writer.commit()
    log.info("report run %s: %s of %s", report.id, document, run.id)
    return report


def render_pipeline_report(
    run: Run,
    *,
    store: RunStore,
    home: Path,
    reports_dir: Path | None = None,
    engine: str = "auto",
    timeout_s: int = 600,
) -> Run:
    """Render the pipeline document for the lineage that ends in ``run`` (e.g. an analysis run)."""
    return render_report(
        run, store=store, home=home, reports_dir=reports_dir, engine=engine, timeout_s=timeout_s, document=PIPELINE
    )


def report_files(report: Run) -> tuple[Path, Path]:
    """The HTML and PDF of a ``report`` run."""
    document = report.summary_as(ReportSummary).document
    return report.file(f"{document}.html"), report.file(f"{document}.pdf")
