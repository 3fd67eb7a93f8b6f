"""Reports: the results API, the offline render path (jupytext → nbclient → pandoc / typst) and `lstm-adv report`.

The runs come from a fast fixture pipeline without a database: a small query run written per the
query-run contract, then the real preprocess stage over it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import attrs
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lstm_adv.cli import app
from lstm_adv.domain.errors import DataError, ReportError, RunKindError
from lstm_adv.preprocess import run_preprocess
from lstm_adv.reports import DOCUMENTS, document_for, find_reports_dir, render_document, render_report, report_files
from lstm_adv.resources import load_feature_spec, read_feature_definitions
from lstm_adv.results import api
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import QuerySummary, ReportSummary, Step
from tests.summaries import synth_summary

N_STAYS = 80
SUBJECT0, HADM0, ICUSTAY0 = 7_000_001, 8_000_001, 9_000_001
START = pd.Timestamp("2150-03-01 08:00")


# --- fixture pipeline -----------------------------------------------------------------------------


def _stays() -> pd.DataFrame:
    """ICU stays: every 10th a minor, every 13th a short ICU stay; stays 4k and 4k+1 share an admission."""
    i = np.arange(N_STAYS)
    hadm_index = np.where(i % 4 == 1, i - 1, i)
    intime = START + pd.to_timedelta(i * 3, unit="D") + pd.to_timedelta(np.where(i % 4 == 1, 30, 0), unit="h")
    icu_days = np.where(i % 13 == 5, 0.5, 3.0)
    age = np.where(i % 10 == 3, 16.0, 40.0 + i % 50)
    stays = pd.DataFrame(
        {
            "subject_id": SUBJECT0 + np.where(hadm_index % 8 == 4, hadm_index - 4, hadm_index),
            "hadm_id": HADM0 + hadm_index,
            "icustay_id": ICUSTAY0 + i,
            "intime": intime,
            "outtime": intime + pd.to_timedelta(icu_days, unit="D"),
            "admittime": intime - pd.Timedelta(hours=6),
            "dischtime": intime + pd.Timedelta(days=8),
            "age_years": age,
            "icu_los_days": icu_days,
            "hospital_los_days": np.full(N_STAYS, 8.25),
            "hospital_expire_flag": (hadm_index % 5 == 0).astype(np.int64),
        }
    )
    stays["adult"] = stays["age_years"] >= 18
    stays["hospital_los_ok"] = True
    stays["icu_los_ok"] = stays["icu_los_days"] >= 1
    stays["included"] = stays["adult"] & stays["hospital_los_ok"] & stays["icu_los_ok"]
    return stays


def _admissions(stays: pd.DataFrame) -> pd.DataFrame:
    included = stays[stays["included"]].sort_values(["hadm_id", "intime"])
    grouped = included.groupby("hadm_id", as_index=False)
    admissions = grouped.agg(
        subject_id=("subject_id", "first"),
        window_start=("intime", "min"),
        n_icustays=("icustay_id", "size"),
        first_icustay_id=("icustay_id", "first"),
        age_years=("age_years", "first"),
        label=("hospital_expire_flag", "max"),
    )
    return admissions[["subject_id", "hadm_id", "window_start", "n_icustays", "first_icustay_id", "age_years", "label"]]


def _measurements(admissions: pd.DataFrame, names: tuple[str, ...], every: int, hours: np.ndarray) -> pd.DataFrame:
    """Long rows for ``names`` every ``every`` hours; a few admissions start late or stop early."""
    n = len(admissions)
    position = np.arange(n)
    first = np.where(position % 11 == 2, 9, 0)  # dropped: first measurement after hour 3
    last = np.where(position % 11 == 7, 30, 47)  # dropped: last measurement before hour 46
    grid = hours[hours % every == 0] if every > 1 else hours
    grid = np.unique(np.r_[grid, 47])
    sample, hour = np.repeat(position, grid.size), np.tile(grid, n)
    keep = ((hour >= first[sample]) & (hour <= last[sample])) | (hour < 0)
    sample, hour = sample[keep], hour[keep]
    k = len(names)
    rng = np.random.default_rng(every)
    frame = pd.DataFrame(
        {
            "hadm_id": np.repeat(admissions["hadm_id"].to_numpy()[sample], k),
            "charttime": np.repeat(
                admissions["window_start"].to_numpy()[sample]
                + pd.to_timedelta(hour, unit="h")
                + pd.Timedelta(minutes=10),
                k,
            ),
            "feature": np.tile(np.array(names), sample.size),
            "value": rng.normal(50, 10, sample.size * k) + np.repeat(admissions["label"].to_numpy()[sample] * 5.0, k),
        }
    )
    return frame[frame["hadm_id"] != admissions["hadm_id"].iloc[-1]]  # one admission without any measurement


def make_query_run(store: RunStore) -> Run:
    """A query run following the query-run contract, written without a database."""
    spec = load_feature_spec()
    stays = _stays()
    admissions = _admissions(stays)
    hours = np.arange(-6, 48)
    tables = {
        "vitals": _measurements(admissions, tuple(f.name for f in spec.by_source("vital")), 1, hours),
        "labs": _measurements(admissions, tuple(f.name for f in spec.by_source("lab")), 6, hours),
        "bloodgas": _measurements(admissions, tuple(f.name for f in spec.by_source("bloodgas")), 8, hours),
    }
    flow = [
        ("icu stays", len(stays)),
        ("age >= 18", int(stays["adult"].sum())),
        ("hospital stay >= 1 day", int((stays["adult"] & stays["hospital_los_ok"]).sum())),
        ("icu stay >= 1 day", int(stays["included"].sum())),
        ("admissions", len(admissions)),
    ]
    with store.create("query", config={}) as writer:
        stays.to_parquet(writer.file("stays.parquet"))
        admissions.to_parquet(writer.file("admissions.parquet"))
        for name, frame in tables.items():
            frame.to_parquet(writer.file(f"{name}.parquet"))
        writer.summary = QuerySummary(
            flow=tuple(Step(s, c) for s, c in flow),
            schema="mimiciii",
            source="embedded",
            tables={"stays": len(stays), "admissions": len(admissions)}
            | {name: len(frame) for name, frame in tables.items()},
        )
    assert writer.committed is not None
    return writer.committed


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunStore, Run, Run]:
    """A workspace home with a query run and the features run preprocessed from it."""
    home = tmp_path_factory.mktemp("reports") / "home"
    store = RunStore(home / "runs")
    query = make_query_run(store)
    features = run_preprocess(store, str(query.id), load_config())
    return home, store, query, features


def cohort_ids(query: Run) -> set[str]:
    """Every subject, admission and ICU stay id of the fixture cohort, as text."""
    stays = pd.read_parquet(query.file("stays.parquet"))
    return {str(v) for column in ("subject_id", "hadm_id", "icustay_id") for v in stays[column].unique()}


def cohort_times(query: Run) -> set[str]:
    """The dates of every stored time of the fixture (as YYYY-MM-DD), which no report may show."""
    stays = pd.read_parquet(query.file("stays.parquet"))
    columns = ("intime", "outtime", "admittime", "dischtime")
    return {f"{t:%Y-%m-%d}" for column in columns for t in stays[column]}


def visible_text(html: str) -> str:
    """The HTML without embedded data URIs (base64 digits could mimic an id by chance)."""
    return re.sub(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+", "data:", html)


def leaked(text: str, needles: set[str]) -> list[str]:
    """The needles that occur in ``text`` as whole numbers/dates (not inside a longer digit run)."""
    return sorted(n for n in needles if re.search(rf"(?<!\d){re.escape(n)}(?!\d)", text))


# --- results API -----------------------------------------------------------------------------------


def test_cohort_flow_of_features_run_continues_the_query_flow(workspace: tuple[Path, RunStore, Run, Run]) -> None:
    """A features run's flow starts with its query run's steps and ends with the samples that passed."""
    home, _store, _query, features = workspace
    flow = api.cohort_flow(api.load_run(str(features.id), home))
    assert flow["stage"].tolist()[:5] == ["query"] * 5
    assert flow["step"].iloc[0] == "icu stays"
    assert flow["count"].iloc[0] == N_STAYS
    assert flow["step"].iloc[-1] == "samples out"
    assert flow["count"].iloc[-1] == features.manifest.summary.shape[0]
    preprocess = flow[flow["stage"] == "preprocess"]
    assert (preprocess["count"].diff().dropna() <= 0).all()
    assert int(preprocess["removed"].sum()) == preprocess["count"].iloc[0] - preprocess["count"].iloc[-1]


def test_class_balance_per_split_adds_up(workspace: tuple[Path, RunStore, Run, Run]) -> None:
    """Class balance has one row per split whose samples sum to N and positives to the label sum."""
    _home, _store, _query, features = workspace
    balance = api.class_balance(features)
    assert balance["split"].tolist() == ["train", "validation", "test"]
    assert int(balance["samples"].sum()) == features.manifest.summary.shape[0]
    assert (balance["positives"] + balance["negatives"] == balance["samples"]).all()


def test_missingness_has_every_feature_in_model_order(workspace: tuple[Path, RunStore, Run, Run]) -> None:
    """Missingness lists the 19 features in model order with shares in [0, 1], for both run kinds."""
    _home, _store, query, features = workspace
    for run in (query, features):
        frame = api.missingness(run)
        assert tuple(frame["feature"]) == load_feature_spec().names
        assert frame["missing"].between(0, 1).all()


def test_coverage_gives_measured_shares_and_never_measured_counts(workspace: tuple[Path, RunStore, Run, Run]) -> None:
    """A features run's coverage restates its summary in model order; a query run's counts admissions without rows."""
    _home, _store, query, features = workspace
    frame = api.coverage(features)
    summary = features.manifest.summary
    assert tuple(frame["feature"]) == load_feature_spec().names
    assert frame["measured"].tolist() == [summary.coverage[n].measured_fraction for n in frame["feature"]]
    assert frame["never measured"].tolist() == [summary.coverage[n].unmeasured_samples for n in frame["feature"]]
    assert api.samples_without_vitals(features) == summary.samples_without_vitals
    rows = pd.concat(pd.read_parquet(query.file(f"{t}.parquet")) for t in ("vitals", "labs", "bloodgas"))
    n_admissions = len(pd.read_parquet(query.file("admissions.parquet")))
    measured_in = rows.drop_duplicates(["hadm_id", "feature"]).groupby("feature").size()
    expected = [n_admissions - int(measured_in.get(name, 0)) for name in load_feature_spec().names]
    by_query = api.coverage(query)
    assert by_query["never measured"].tolist() == expected
    assert by_query["measured"].isna().all()


def test_reports_use_the_definitions_the_data_were_made_with(workspace: tuple[Path, RunStore, Run, Run]) -> None:
    """A query run made with features_serum.toml is described with its definitions (potassium from lab tests)."""
    _home, store, query, _features = workspace
    serum = read_feature_definitions("features_serum.toml")
    with store.create("query", config={}) as writer:
        for name in ("stays", "admissions", "vitals", "labs", "bloodgas"):
            writer.file(f"{name}.parquet").write_bytes(query.file(f"{name}.parquet").read_bytes())
        writer.summary = attrs.evolve(query.manifest.summary, features=serum, window_start="the start")
    run = writer.committed
    assert run is not None
    sources = dict(zip(api.coverage(run)["feature"], api.coverage(run)["source"], strict=True))
    assert (sources["potassium"], sources["calcium"]) == ("lab", "bloodgas")
    assert api.missingness(run)["source"].tolist() == list(sources.values())
    assert api.feature_definitions_used(run)["value"].tolist() == ["features_serum.toml", serum.sha256]
    assert api.window_start_rule(run) == "the start"
    assert api.window_start_rule(query).endswith("(not recorded by this older run)")


def test_api_frames_carry_no_identifier_columns(workspace: tuple[Path, RunStore, Run, Run]) -> None:
    """No frame of the results API has an id or time column or holds a cohort id."""
    _home, _store, query, features = workspace
    ids = cohort_ids(query)
    for run in (query, features):
        for frame in (
            api.cohort_flow(run),
            api.class_balance(run),
            api.missingness(run),
            api.measurement_counts(run),
            api.run_overview(run),
            api.coverage(run),
            api.feature_definitions_used(run),
        ):
            assert not leaked(frame.to_csv(), ids)


def test_aggregates_only_refuses_an_identifier_column() -> None:
    """A frame with a hadm_id column is refused with a message naming the column."""
    with pytest.raises(DataError) as info:
        api.aggregates_only(pd.DataFrame({"hadm_id": [1], "count": [2]}))
    assert str(info.value) == "results API: column 'hadm_id' is patient-level; reports may only show aggregates"


def test_load_run_checks_the_kind(workspace: tuple[Path, RunStore, Run, Run]) -> None:
    """Loading a run of a kind the report cannot show names both kinds."""
    home, _store, query, _features = workspace
    with pytest.raises(RunKindError) as info:
        api.load_run(str(query.id), home, kinds=("features",))
    assert str(info.value) == f"run {query.id} is a query run; this report needs a features run"


# --- documents and engine ----------------------------------------------------------------------------


def test_every_document_of_the_mapping_exists() -> None:
    """Each run kind in DOCUMENTS names a .qmd with a parameters cell in the reports folder."""
    folder = find_reports_dir()
    for document in set(DOCUMENTS.values()):
        text = (folder / f"{document}.qmd").read_text(encoding="utf-8")
        assert "#| tags: [parameters]" in text
        assert "run_id = None" in text


def test_unknown_kind_has_no_document() -> None:
    """Asking for the document of a kind without one lists the kinds that have one."""
    with pytest.raises(ReportError) as info:
        document_for("synth")
    kinds = ", ".join(sorted(DOCUMENTS))
    assert str(info.value) == f"there is no report for synth runs yet; reports exist for runs of kind {kinds}"


@pytest.fixture(scope="module")
def rendered(workspace: tuple[Path, RunStore, Run, Run]) -> dict[str, Run]:
    """One report run per data run (offline engine)."""
    home, store, query, features = workspace
    return {
        kind: render_report(run, store=store, home=home, engine="offline")
        for kind, run in (("query", query), ("features", features))
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["query", "features"])
def test_report_html_is_self_contained_with_figures(rendered: dict[str, Run], kind: str) -> None:
    """The HTML embeds every image and style (no external src/href) and shows the three figures."""
    html_path, _pdf = report_files(rendered[kind])
    html = html_path.read_text(encoding="utf-8")
    external = re.findall(r"""(?:src|href)\s*=\s*["']?(?!data:|#)([^"'\s>]+)""", html)
    assert external == []
    assert "<script src" not in html
    assert "<link " not in html
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', html)) >= 3
    for label in ("fig-flow", "fig-balance", "fig-missing"):
        assert f'<figure id="{label}"' in html
    assert re.search(r'<a href="#fig-missing"[^>]*>Figure 3</a>', html)
    assert "Figure 3: Missing share per feature" in html
    assert "import matplotlib" not in html  # code hidden by default
    assert '<a href="#tbl-coverage"' in html
    if kind == "features":
        assert "have no vital sign measured at all" in html


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["query", "features"])
def test_report_pdf_has_pages(rendered: dict[str, Run], kind: str) -> None:
    """The PDF is a PDF with at least two pages."""
    _html, pdf_path = report_files(rendered[kind])
    data = pdf_path.read_bytes()
    assert data.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page(?!s)", data)) >= 2
    assert b"/Suspects" not in data  # poppler (<= 25.11) warns on every read of typst's explicit default
    if shutil.which("pdfinfo"):
        checked = subprocess.run(["pdfinfo", str(pdf_path)], capture_output=True, text=True, check=True)
        assert checked.stderr == ""


def test_dropping_the_false_suspects_flag_keeps_every_byte_offset() -> None:
    """The catalog's `/Suspects false` becomes blanks of the same length; anything else is left as it is."""
    from lstm_adv.rendering import drop_false_suspects

    data = b"%PDF-1.7 1 0 obj<</Type/Catalog/MarkInfo<</Marked true/Suspects false>>>>endobj xref 9"
    cleaned = drop_false_suspects(data)
    assert len(cleaned) == len(data)
    assert cleaned.index(b"xref") == data.index(b"xref")
    assert b"Suspects" not in cleaned
    assert re.search(rb"/MarkInfo<</Marked true\s+>>>>endobj", cleaned)
    other = b"%PDF-1.7 <</MarkInfo<</Marked true/Suspects true>>>>"
    assert drop_false_suspects(other) == other


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["query", "features"])
def test_report_shows_no_cohort_id_or_time(
    workspace: tuple[Path, RunStore, Run, Run], rendered: dict[str, Run], kind: str
) -> None:
    """No subject, admission or stay id, and no date of the cohort, appears in the HTML, notebook or PDF text."""
    _home, _store, query, _features = workspace
    needles = cohort_ids(query) | cohort_times(query)
    report = rendered[kind]
    html_path, pdf_path = report_files(report)
    assert leaked(visible_text(html_path.read_text(encoding="utf-8")), needles) == []
    assert leaked(visible_text(report.file("data.ipynb").read_text(encoding="utf-8")), needles) == []
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(pdf_path), "-"], capture_output=True, text=True, check=True).stdout
        assert "Cohort flow" in text
        assert leaked(text, needles) == []


@pytest.mark.slow
def test_report_run_records_its_parent(workspace: tuple[Path, RunStore, Run, Run], rendered: dict[str, Run]) -> None:
    """A report run names the reported run as parent and lists its files."""
    _home, _store, _query, features = workspace
    report = rendered["features"]
    assert report.kind == "report"
    assert report.manifest.parents == (features.id,)
    assert report.manifest.summary.files == ("data.html", "data.pdf", "data.ipynb")
    assert report.manifest.summary.engine == "offline"


@pytest.mark.slow
def test_failing_cell_fails_the_render(tmp_path: Path) -> None:
    """A document whose cell raises fails the render naming the cell and the error, and writes nothing."""
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "_quarto.yml").write_text("execute:\n  echo: false\n", encoding="utf-8")
    (folder / "broken.qmd").write_text(
        "---\ntitle: Broken\n---\n\n```{python}\n#| tags: [parameters]\nrun_id = None\n```\n\n"
        "```{python}\n#| label: fig-boom\n#| fig-cap: never drawn\nraise RuntimeError('stored table missing')\n```\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    with pytest.raises(ReportError) as info:
        render_document(folder / "broken.qmd", {"run_id": "x"}, out, engine="offline")
    assert str(info.value) == (
        "broken.qmd: code cell 2 (fig-boom) failed with RuntimeError: stored table missing; "
        "no report was written — fix the document or the run it reads"
    )
    assert not list(out.glob("*.html"))
    assert child_processes() == []  # the kernel is shut down, also after a failure


def child_processes() -> list[int]:
    """Ids of this process's live children (Linux /proc; empty elsewhere)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return children


@pytest.mark.slow
def test_unresolved_cross_reference_fails_the_render(tmp_path: Path) -> None:
    """A @fig- reference to a label no cell has fails the render instead of printing it raw."""
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "_quarto.yml").write_text("execute:\n  echo: false\n", encoding="utf-8")
    (folder / "ref.qmd").write_text(
        "```{python}\n#| tags: [parameters]\nrun_id = None\n```\n\nSee @fig-nothing.\n", encoding="utf-8"
    )
    with pytest.raises(ReportError) as info:
        render_document(folder / "ref.qmd", {"run_id": "x"}, tmp_path / "out", engine="offline")
    assert str(info.value) == "ref.qmd: cross-reference @fig-nothing names no cell label; known: "


# --- CLI ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_report_prints_both_paths(workspace: tuple[Path, RunStore, Run, Run]) -> None:
    """`lstm-adv report <id>` renders the data report of a features run and prints the HTML and PDF paths."""
    home, store, _query, features = workspace
    result = CliRunner().invoke(app, ["--home", str(home), "report", str(features.id)[:20], "--engine", "offline"])
    assert result.exit_code == 0, result.output
    paths = [Path(line.strip()) for line in result.output.splitlines() if line.strip().endswith((".html", ".pdf"))]
    assert [p.suffix for p in paths] == [".html", ".pdf"]
    assert all(p.is_file() for p in paths)
    assert store.get(paths[0].parent.name, kind="report").manifest.parents == (features.id,)


def test_cli_pipeline_flag_renders_the_pipeline_document(workspace: tuple[Path, RunStore, Run, Run]) -> None:
    """`lstm-adv report <id> --pipeline` renders pipeline.qmd for the lineage ending in the run."""
    home, store, _query, features = workspace
    args = ["--home", str(home), "report", str(features.id), "--engine", "offline", "--pipeline"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    html = next(Path(line.strip()) for line in result.output.splitlines() if line.strip().endswith(".html"))
    assert html.name == "pipeline.html"
    assert store.get(html.parent.name, kind="report").summary_as(ReportSummary).document == "pipeline"


def test_cli_report_of_a_kind_without_document_is_one_red_line(workspace: tuple[Path, RunStore, Run, Run]) -> None:
    """Reporting a run kind without a document exits 1 with the toolkit's message and writes no report run."""
    home, store, _query, _features = workspace
    with store.create("synth", config={}) as writer:
        writer.summary = synth_summary()
    assert writer.committed is not None
    before = len(store.list("report"))
    result = CliRunner().invoke(app, ["--home", str(home), "report", str(writer.committed.id)])
    assert result.exit_code == 1
    assert "there is no report for synth runs yet" in result.output
    assert len(store.list("report")) == before
