"""`lstm-adv db …`: the embedded PostgreSQL server and the shipped MIMIC-III demo."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from lstm_adv.cli._common import console, state

if TYPE_CHECKING:
    from lstm_adv.database.server import ServerInfo

app = typer.Typer(
    help=(
        "The toolkit's own PostgreSQL server, kept in the pg/ folder of the workspace (see --home); "
        "no install, and no password to choose: it makes its own and keeps them in pg/, readable by you only.\n\n"
        "Typical first steps: `lstm-adv db start`, then `lstm-adv db load-demo`, then `lstm-adv query`."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

PortOption = Annotated[
    int | None,
    typer.Option(
        "--port",
        min=0,
        max=65535,
        help="TCP port on 127.0.0.1 for the server; 0 picks a free one [default: embedded.port, i.e. 0].",
    ),
]


@app.command("start")
def start(ctx: typer.Context, port: PortOption = None) -> None:
    """Start the embedded PostgreSQL server (creating it on first use) and print its DSN.

    Running it again is harmless: a running server is reused. Every login needs a password; the DSN
    names the file that holds it (`passfile=`), so it is safe to print and to paste into a command line.
    """
    from lstm_adv.database.server import server_status, start_server

    cli = state(ctx)
    pg_dir = cli.workspace().pg_dir
    already = server_status(pg_dir)
    info = start_server(pg_dir, cli.config({"embedded.port": port}).embedded)
    verb = "already running" if already is not None and already.pid == info.pid else "started"
    console.print(f"embedded PostgreSQL {verb} (pid {info.pid}, data in {info.data_dir})", highlight=False)
    console.print(f"DSN: {info.dsn}", highlight=False, soft_wrap=True)
    console.print(_protection(info), highlight=False, soft_wrap=True)


@app.command("status")
def status(ctx: typer.Context) -> None:
    """Say whether the embedded server runs, and where (port, DSN, data folder)."""
    from lstm_adv.database.server import server_status

    pg_dir = state(ctx).workspace().pg_dir
    info = server_status(pg_dir)
    if info is None:
        console.print(f"embedded PostgreSQL: stopped (folder {pg_dir}); start it with `lstm-adv db start`")
        return
    console.print(f"embedded PostgreSQL: running (pid {info.pid})", highlight=False)
    console.print(f"port: {info.port}\nDSN: {info.dsn}\ndata: {info.data_dir}", highlight=False, soft_wrap=True)
    console.print(_protection(info), highlight=False, soft_wrap=True)


def _protection(info: ServerInfo) -> str:
    """One line on how clients log in to the server ``info``."""
    from lstm_adv.database.server import ROLE, password_protected

    if not password_protected(info.data_dir.parent):
        return "password protection: off (made by an older lstm-adv); `lstm-adv db start` turns it on"
    return (
        f"password-protected: the toolkit logs in as {ROLE} (not a superuser) with the password in "
        f"{info.passfile}, readable by you only"
    )


@app.command("stop")
def stop(ctx: typer.Context) -> None:
    """Stop the embedded server (its data stays; `lstm-adv db start` brings it back)."""
    from lstm_adv.database.server import stop_server

    pg_dir = state(ctx).workspace().pg_dir
    if stop_server(pg_dir):
        console.print("embedded PostgreSQL stopped")
    else:
        console.print("embedded PostgreSQL was not running")


@app.command("load-demo")
def load_demo(
    ctx: typer.Context,
    schema: Annotated[
        str | None, typer.Option(help="Schema to (re)create the tables in [default: database.schema, i.e. mimiciii].")
    ] = None,
    dsn: Annotated[
        str | None,
        typer.Option(
            help="Load into this PostgreSQL instead of the embedded server, e.g. postgresql://me@host:5432/db "
            "(give the password through PGPASSWORD or ~/.pgpass, not here).",
        ),
    ] = None,
    port: PortOption = None,
) -> None:
    """Load the shipped MIMIC-III demo (100 patients; ODbL) into the embedded server.

    Starts the server if needed and replaces the demo's seven tables (patients, admissions, icustays,
    chartevents, labevents, d_items, d_labitems) in the schema.
    """
    from lstm_adv.database.connection import connect, describe_source
    from lstm_adv.database.demo import load_demo as load_demo_tables
    from lstm_adv.database.server import start_server

    cli = state(ctx)
    config = cli.config({"database.schema": schema, "embedded.port": port})
    target = dsn or start_server(cli.workspace().pg_dir, config.embedded).dsn
    with connect(target, timeout_s=config.database.connect_timeout_s) as conn:
        counts = load_demo_tables(conn, schema=config.database.schema)
    console.print(f"loaded the MIMIC-III demo into schema {config.database.schema} at {describe_source(target)}:")
    for table, rows in counts.items():
        console.print(f"  {table}: {rows:,} rows", highlight=False)
