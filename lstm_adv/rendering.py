"""Rendering a Quarto document (``.qmd``) to self-contained HTML and a PDF, with or without Quarto.

With ``quarto`` on PATH the document is rendered by Quarto; otherwise by the offline path:

1. jupytext reads the ``.qmd`` (its R Markdown reader understands ```` ```{python} ```` chunks; the
   ``#|`` cell options stay in the source and are parsed here);
2. the parameters are injected after the ``parameters`` cell (as papermill does) and nbclient runs
   the notebook in a kernel of this very Python; any cell error fails the render;
3. outputs become Markdown: figures as PNG files with numbered captions, ``@fig-…``/``@tbl-…``
   cross-references as "Figure N" links, code hidden unless ``echo: true``;
4. pandoc writes HTML with every resource embedded (no network fetch when opened) and Typst source,
   which the ``typst`` bindings compile to PDF.

:func:`markdown_table` is the helper documents use to show a table in both formats.
"""

from __future__ import annotations

import base64
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from lstm_adv.domain.errors import ReportError

if TYPE_CHECKING:
    import pandas as pd

ENGINES = ("auto", "quarto", "offline")
DEFAULT_OPTIONS: dict[str, Any] = {"echo": False, "output": True, "include": True, "warning": True}
_XREF = re.compile(r"(?<![\w@])@((fig|tbl)-[A-Za-z0-9_-]+)")
_OPTION = re.compile(r"^#\|\s?(.*)$")
_PREFIX = {"fig": "Figure", "tbl": "Table"}
# Pipe tables wider than --columns get fixed relative widths (and wrapped cells); let them size themselves.
_WIDE = ["--columns=400"]
# Typst numbers figures itself; the captions already carry "Figure N", shared with the HTML. Tables are set
# smaller, ragged and unhyphenated: a column typst has to squeeze must not split a header ("exam-ple").
TYPST_HEADER = (
    "#show figure.caption: it => it.body\n#set image(width: 90%)\n#set text(size: 10pt)\n"
    "#show table: set text(size: 9pt, hyphenate: false)\n#show table: set par(justify: false)\n"
    # a long table continues on the next page instead of pushing itself there whole (no half-blank pages)
    "#show figure.where(kind: table): set block(breakable: true)\n"
)


@attrs.frozen
class Rendered:
    """The files one render produced."""

    html: Path
    pdf: Path
    notebook: Path | None
    engine: str


@attrs.frozen
class Cell:
    """One code cell of a document: its ``#|`` options and the code without them."""

    options: dict[str, Any]
    code: str

    @classmethod
    def parse(cls, source: str, *, origin: str) -> Cell:
        """Split the leading ``#| key: value`` lines (YAML) from the code."""
        lines = source.splitlines()
        n = next((i for i, line in enumerate(lines) if not _OPTION.match(line)), len(lines))
        text = "\n".join(_OPTION.sub(r"\1", line) for line in lines[:n])
        options = _yaml_mapping(text, origin=f"{origin}: cell options") if text.strip() else {}
        return cls(options=options, code="\n".join(lines[n:]))

    @property
    def label(self) -> str | None:
        """The cell's ``label`` option."""
        label = self.options.get("label")
        return str(label) if label is not None else None

    def tagged(self, tag: str) -> bool:
        """Whether ``tags`` lists ``tag``."""
        tags = self.options.get("tags") or []
        return tag in (tags if isinstance(tags, list) else [tags])


def render_document(
    qmd: Path, params: Mapping[str, Any], out_dir: Path, *, engine: str = "auto", timeout_s: int = 600
) -> Rendered:
    """Render ``qmd`` with ``params`` into ``out_dir`` (``<stem>.html``, ``<stem>.pdf``)."""
    if engine not in ENGINES:
        raise ReportError(f"unknown report engine {engine!r}; engines: {', '.join(ENGINES)}")
    quarto = shutil.which("quarto")
    if engine == "quarto" and quarto is None:
        raise ReportError("engine 'quarto' needs the quarto binary on PATH; install Quarto or use --engine offline")
    out_dir.mkdir(parents=True, exist_ok=True)
    if quarto is not None and engine != "offline":
        return _render_quarto(quarto, qmd, params, out_dir, timeout_s=timeout_s)
    return render_offline(qmd, params, out_dir, timeout_s=timeout_s)


# --- Quarto -------------------------------------------------------------------------------------


def _render_quarto(quarto: str, qmd: Path, params: Mapping[str, Any], out_dir: Path, *, timeout_s: int) -> Rendered:
    """``quarto render`` in a copy of the project (so the source folder stays clean), once per format."""
    with tempfile.TemporaryDirectory(prefix="lstm-adv-quarto-") as tmp:
        project = Path(tmp) / "reports"
        shutil.copytree(qmd.parent, project, ignore=shutil.ignore_patterns("_freeze", ".quarto", "*_files"))
        args = [a for key, value in params.items() for a in ("-P", f"{key}:{value}")]
        for fmt, suffix in (("html", ".html"), ("typst", ".pdf")):
            command = [quarto, "render", qmd.name, "--to", fmt, *args]
            _run_tool(command, cwd=project, timeout_s=timeout_s, what=f"quarto render {qmd.name} --to {fmt}")
            shutil.move(project / f"{qmd.stem}{suffix}", out_dir / f"{qmd.stem}{suffix}")
    return Rendered(html=out_dir / f"{qmd.stem}.html", pdf=out_dir / f"{qmd.stem}.pdf", notebook=None, engine="quarto")


def _run_tool(command: list[str], *, cwd: Path, timeout_s: int, what: str) -> None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ReportError(f"{what} did not finish within {timeout_s} s") from None
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise ReportError(f"{what} failed (exit {result.returncode}); no report was written:\n{tail}")


# --- offline: read, execute ---------------------------------------------------------------------


def render_offline(qmd: Path, params: Mapping[str, Any], out_dir: Path, *, timeout_s: int = 600) -> Rendered:
    """The offline path: jupytext → nbclient → Markdown → pandoc (HTML) and pandoc → typst (PDF)."""
    settings = document_settings(qmd)
    notebook = read_document(qmd)
    inject_parameters(notebook, params, origin=qmd.name)
    execute_notebook(notebook, settings, cwd=qmd.parent, timeout_s=timeout_s, origin=qmd.name)
    notebook_path = out_dir / f"{qmd.stem}.ipynb"
    _nbformat().write(notebook, notebook_path)
    with tempfile.TemporaryDirectory(prefix="lstm-adv-report-") as tmp:
        work = Path(tmp)
        markdown = notebook_to_markdown(notebook, settings, work, origin=qmd.name)
        (work / "report.md").write_text(markdown, encoding="utf-8")
        html, pdf = out_dir / f"{qmd.stem}.html", out_dir / f"{qmd.stem}.pdf"
        _pandoc_html(work, html, css=qmd.parent / "styles.css", toc=bool(settings.get("toc", False)))
        _pandoc_pdf(work, pdf)
    return Rendered(html=html, pdf=pdf, notebook=notebook_path, engine="offline")


def document_settings(qmd: Path) -> dict[str, Any]:
    """Front matter over the project's ``_quarto.yml``: title etc., ``execute`` options, html/typst formats."""
    project = qmd.parent / "_quarto.yml"
    base = _yaml_mapping(project.read_text(encoding="utf-8"), origin=str(project)) if project.is_file() else {}
    front = _front_matter(qmd.read_text(encoding="utf-8"), origin=qmd.name)
    settings = {k: v for k, v in base.items() if k not in ("project", "format")} | front
    settings["execute"] = DEFAULT_OPTIONS | dict(base.get("execute") or {}) | dict(front.get("execute") or {})
    html = dict((base.get("format") or {}).get("html") or {}) | dict((front.get("format") or {}).get("html") or {})
    settings["toc"] = html.get("toc", False)
    return settings


def read_document(qmd: Path) -> Any:
    """The ``.qmd`` as an nbformat notebook (front matter in a leading raw cell)."""
    import jupytext

    try:
        notebook = jupytext.reads(qmd.read_text(encoding="utf-8"), fmt="Rmd")
    except Exception as exc:  # jupytext raises several kinds on malformed text
        raise ReportError(f"report document {qmd} cannot be read: {exc}") from None
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def inject_parameters(notebook: Any, params: Mapping[str, Any], *, origin: str) -> None:
    """Insert a cell assigning ``params`` right after the cell tagged ``parameters`` (papermill's rule)."""
    index = next(
        (
            i
            for i, c in enumerate(notebook.cells)
            if c.cell_type == "code" and Cell.parse(c.source, origin=origin).tagged("parameters")
        ),
        None,
    )
    if index is None:
        raise ReportError(f"{origin} has no cell tagged parameters (#| tags: [parameters]); add one with run_id = None")
    lines = ["#| tags: [injected-parameters]", *(f"{key} = {value!r}" for key, value in params.items())]
    notebook.cells.insert(index + 1, _nbformat().v4.new_code_cell("\n".join(lines)))


def execute_notebook(notebook: Any, settings: Mapping[str, Any], *, cwd: Path, timeout_s: int, origin: str) -> None:
    """Run every Python cell in a fresh kernel of this interpreter; the first error fails the render."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    _hide_non_python(notebook)
    notebook.cells.insert(0, _nbformat().v4.new_code_cell(_setup_code(settings)))
    km = _kernel_manager()
    client = NotebookClient(
        notebook, km=km, timeout=timeout_s, allow_errors=False, resources={"metadata": {"path": str(cwd)}}
    )
    env = os.environ | {
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    try:
        client.execute(env=env, stderr=subprocess.DEVNULL)  # the kernel's own chatter, not cell output
    except CellExecutionError as exc:
        raise ReportError(
            f"{origin}: {_failed_cell(notebook)} failed with {exc.ename}: {exc.evalue}; "
            "no report was written — fix the document or the run it reads"
        ) from None
    except (CellTimeoutError, DeadKernelError) as exc:
        raise ReportError(f"{origin}: {_failed_cell(notebook)} did not finish: {exc}") from None
    finally:
        notebook.cells.pop(0)
        if km.has_kernel:  # nbclient leaves a kernel manager it was given running
            km.shutdown_kernel(now=True)


def _hide_non_python(notebook: Any) -> None:
    """Raw blocks (```` ```{=html} ````) must not run: they become raw cells that keep their language."""
    for index, cell in enumerate(notebook.cells):
        language = cell.metadata.get("language")
        if cell.cell_type == "code" and language and language != "python":
            notebook.cells[index] = _nbformat().v4.new_raw_cell(cell.source, metadata={"language": str(language)})


def _setup_code(settings: Mapping[str, Any]) -> str:
    """Figure size and resolution (Quarto's ``fig-width``, ``fig-height``, ``fig-dpi``; inches)."""
    width, height = float(settings.get("fig-width", 7)), float(settings.get("fig-height", 4))
    dpi = int(settings.get("fig-dpi", 110))
    return (
        "import matplotlib\n"
        f"matplotlib.rcParams.update({{'figure.figsize': ({width}, {height}), 'figure.dpi': {dpi}}})\n"
        "from matplotlib_inline.backend_inline import set_matplotlib_formats\nset_matplotlib_formats('png')"
    )


def _kernel_manager() -> Any:
    """A kernel of the running interpreter, whatever kernelspec named python3 is installed elsewhere."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = KernelSpec(
        argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        display_name="Python 3 (lstm-adv)",
        language="python",
    )

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> Any:
            return spec

    return KernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())


def _failed_cell(notebook: Any) -> str:
    """The failing cell, numbered among the document's own code cells (not the setup or injected ones)."""
    cells = [(c, Cell.parse(c.source, origin="")) for c in notebook.cells[1:] if c.cell_type == "code"]
    own = [(cell, parsed) for cell, parsed in cells if not parsed.tagged("injected-parameters")]
    for number, (cell, parsed) in enumerate(own, start=1):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return f"code cell {number}" + (f" ({parsed.label})" if parsed.label else "")
    return "a code cell"


# --- offline: Markdown, HTML, PDF ---------------------------------------------------------------


def notebook_to_markdown(notebook: Any, settings: Mapping[str, Any], work: Path, *, origin: str) -> str:
    """Pandoc Markdown of the executed notebook; figures are written as PNG files into ``work``."""
    numbers = _number_labels(notebook, origin)
    parts = [_metadata_block(settings)]
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "markdown":
            parts.append(_resolve_refs(cell.source, numbers, origin))
        elif cell.cell_type == "raw" and cell.metadata.get("language"):
            parts.append(f"```{{{cell.metadata['language']}}}\n{cell.source}\n```")
        elif cell.cell_type == "code":
            parts.extend(_code_cell(cell, index, settings, numbers, work, origin))
    return "\n\n".join(p for p in parts if p.strip()) + "\n"


def _number_labels(notebook: Any, origin: str) -> dict[str, str]:
    """``fig-…``/``tbl-…`` labels in order of appearance → "Figure N"/"Table N".

    Only a cell that drew its figure (a PNG) or showed its table gets a number: a cell that printed a note
    instead (e.g. a figure a run cannot have) leaves no gap in the numbering, and a reference to it fails.
    """
    numbers: dict[str, str] = {}
    seen: set[str] = set()
    counts = {"fig": 0, "tbl": 0}
    for cell in notebook.cells:
        label = Cell.parse(cell.source, origin=origin).label if cell.cell_type == "code" else None
        kind = label.split("-", 1)[0] if label else None
        if label and kind in counts:
            if label in seen:
                raise ReportError(f"{origin}: label {label!r} is used by two cells; labels must be unique")
            seen.add(label)
            if _shows(cell, kind):
                counts[kind] += 1
                numbers[label] = f"{_PREFIX[kind]} {counts[kind]}"
    return numbers


def _shows(cell: Any, kind: str) -> bool:
    """Whether an executed cell shows a figure (``fig``: a PNG) or a table (``tbl``: Markdown with a pipe)."""
    for output in cell.get("outputs", []):
        data = output.get("data", {})
        if kind == "fig" and "image/png" in data:
            return True
        if kind == "tbl" and "|" in str(data.get("text/markdown", "")):
            return True
    return False


def _resolve_refs(text: str, numbers: Mapping[str, str], origin: str) -> str:
    def replace(match: re.Match[str]) -> str:
        label = match.group(1)
        if label not in numbers:
            raise ReportError(f"{origin}: cross-reference @{label} names no cell label; known: {', '.join(numbers)}")
        return f"[{numbers[label]}](#{label})"

    return _XREF.sub(replace, text)


def _metadata_block(settings: Mapping[str, Any]) -> str:
    yaml = _yaml()
    keys = ("title", "subtitle", "author", "date", "abstract")
    meta = {key: settings[key] for key in keys if settings.get(key)}
    meta |= {"papersize": "a4", "margin": {"x": "2cm", "y": "2cm"}, "lang": "en"}
    return "---\n" + str(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)) + "---"


def _code_cell(
    cell: Any, index: int, settings: Mapping[str, Any], numbers: Mapping[str, str], work: Path, origin: str
) -> list[str]:
    parsed = Cell.parse(cell.source, origin=origin)
    options = dict(settings["execute"]) | parsed.options
    if not options["include"] or parsed.tagged("parameters") or parsed.tagged("injected-parameters"):
        return []
    parts = [f"```python\n{parsed.code}\n```"] if options["echo"] and parsed.code.strip() else []
    if options["output"] is False:
        return parts
    figure = _FigureSlot(parsed, numbers, name=parsed.label or f"cell-{index}")
    for output in cell.get("outputs", []):
        parts.append(_output(output, options, figure, numbers, work, origin))
    return parts


@attrs.define
class _FigureSlot:
    """Names the PNGs of one cell; the first one gets the cell's label and caption."""

    cell: Cell
    numbers: Mapping[str, str]
    name: str
    count: int = 0

    def markdown(self, png: bytes, work: Path) -> str:
        self.count += 1
        path = work / f"{self.name}-{self.count}.png"
        path.write_bytes(png)
        label, caption = self.cell.label, self.cell.options.get("fig-cap")
        if self.count == 1 and label and label.startswith("fig-") and caption:
            return f"![{self.numbers[label]}: {caption}]({path.name}){{#{label}}}"
        return f"![]({path.name})"


def _output(
    output: Any, options: Mapping[str, Any], figure: _FigureSlot, numbers: Mapping[str, str], work: Path, origin: str
) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        if output.get("name") == "stderr" and not options["warning"]:
            return ""
        text = str(output.get("text", ""))
        return _resolve_refs(text, numbers, origin) if options["output"] == "asis" else _fenced(text)
    data = output.get("data", {})
    if "image/png" in data:
        return figure.markdown(base64.b64decode(data["image/png"]), work)
    if "text/markdown" in data:
        return _with_table_caption(_resolve_refs(str(data["text/markdown"]), numbers, origin), figure.cell, numbers)
    if "text/plain" in data:
        return _fenced(str(data["text/plain"]))
    return ""


def _with_table_caption(markdown: str, cell: Cell, numbers: Mapping[str, str]) -> str:
    label, caption = cell.label, cell.options.get("tbl-cap")
    if not (label and label.startswith("tbl-") and caption and "|" in markdown):
        return markdown
    return f"{markdown.rstrip()}\n\n: {numbers[label]}: {caption} {{#{label}}}"


def _fenced(text: str) -> str:
    return f"```\n{text.rstrip()}\n```" if text.strip() else ""


def _pandoc_html(work: Path, html: Path, *, css: Path, toc: bool) -> None:
    """Standalone HTML with images and CSS embedded; MathML, so no script is fetched for formulas."""
    args = ["--standalone", "--embed-resources", f"--resource-path={work}", "--mathml", "--section-divs", *_WIDE]
    args += ["--css", str(css)] if css.is_file() else []
    args += ["--toc"] if toc else []
    _pandoc(work / "report.md", "html5", html, args)


def write_typst(work: Path, *, header: str = TYPST_HEADER) -> Path:
    """The Typst source ``work/report.typ`` of ``work/report.md`` (pandoc), with ``header`` in its preamble."""
    header_file = work / "header.typ"
    header_file.write_text(header, encoding="utf-8")
    source = work / "report.typ"
    _pandoc(work / "report.md", "typst", source, ["--standalone", f"--include-in-header={header_file}", *_WIDE])
    return source


def _pandoc_pdf(work: Path, pdf: Path) -> None:
    """Markdown → Typst source (pandoc) → PDF (the typst bindings, with their bundled fonts)."""
    import typst

    source = write_typst(work)
    try:
        typst.compile(str(source), output=str(pdf), root=str(work))
    except Exception as exc:  # typst raises its own TypstError (and RuntimeError) with the diagnostics
        raise ReportError(f"typst could not compile the PDF: {exc}") from None
    pdf.write_bytes(drop_false_suspects(pdf.read_bytes()))


_FALSE_SUSPECTS = b"/Marked true/Suspects false>>"


def drop_false_suspects(data: bytes) -> bytes:
    """The PDF with its catalog's ``/Suspects false`` left out, in place (blanks keep every byte offset).

    ``false`` is the default of that optional key; poppler up to 25.11 misreads the explicit value and prints
    "Syntax Error: Suspects object is wrong type (boolean)" for every page tool (pdfinfo, pdftoppm) it runs.
    """
    kept = b"/Marked true"
    return data.replace(_FALSE_SUSPECTS, kept + b" " * (len(_FALSE_SUSPECTS) - len(kept) - 2) + b">>", 1)


def _pandoc(source: Path, to: str, output: Path, args: list[str]) -> None:
    import pypandoc

    try:
        pypandoc.convert_file(
            str(source), to, format="markdown", outputfile=str(output), extra_args=args, cworkdir=str(source.parent)
        )
    except (RuntimeError, OSError) as exc:
        raise ReportError(f"pandoc could not write {output.name}: {exc}") from None


# --- helpers for documents -----------------------------------------------------------------------


def markdown_table(
    frame: pd.DataFrame, *, formats: Mapping[str, str] | None = None, names: Mapping[str, str] | None = None
) -> Any:
    """``frame`` as a Markdown pipe table, displayed as Markdown in a report (numbers right-aligned).

    ``formats`` maps a column to a format spec (``{"prevalence": ".1%"}``); missing values show as —.
    ``names`` gives columns the header a reader sees (``{"success_rate": "success rate"}``).
    """
    import pandas as pd

    display: Any = importlib.import_module("IPython.display")
    formats, names = dict(formats or {}), dict(names or {})
    header = "| " + " | ".join(_cell(names.get(str(c), str(c)), "") for c in frame.columns) + " |"
    align = "|" + "|".join("--:" if pd.api.types.is_numeric_dtype(frame[c]) else ":--" for c in frame.columns) + "|"
    columns = [_formatted(frame[c], formats.get(str(c), "")) for c in frame.columns]
    body = pd.concat(columns, axis=1).agg(" | ".join, axis=1) if len(frame) else pd.Series([], dtype=str)
    rows = ["| " + row + " |" for row in body]
    return display.Markdown("\n".join([header, align, *rows]))


def _formatted(column: pd.Series[Any], spec: str) -> pd.Series[str]:
    return column.map(lambda value: _cell(value, spec))


def _cell(value: Any, spec: str) -> str:
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "—"
    text = format(value, spec) if spec else str(value)
    return text.replace("|", "\\|")


def _nbformat() -> Any:
    """nbformat (untyped), imported when a render needs it."""
    return importlib.import_module("nbformat")


def _yaml() -> Any:
    """PyYAML (a dependency of jupytext; untyped)."""
    return importlib.import_module("yaml")


def _yaml_mapping(text: str, *, origin: str) -> dict[str, Any]:
    yaml = _yaml()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ReportError(f"{origin} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ReportError(f"{origin} must be a YAML mapping (key: value lines), got {type(data).__name__}")
    return data


def _front_matter(text: str, *, origin: str) -> dict[str, Any]:
    match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, flags=re.DOTALL)
    return _yaml_mapping(match.group(1), origin=f"{origin} front matter") if match else {}
