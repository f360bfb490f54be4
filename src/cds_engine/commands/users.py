"""``cds-engine users add|list|disable|enable|passwd``: accounts of the review page.

Passwords are read from a hidden prompt (asked twice) or, for scripts, one line of stdin with
``--password-stdin`` — never from the command line, where ``ps`` and shell history would keep it.
"""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cds_engine.store import Store, open_store
from cds_engine.store import users as user_admin
from cds_engine.store.db import redact, resolve_url

__all__ = ["register"]

DbOption = Annotated[str | None, typer.Option(
    "--db", help="Database URL (default: $CDS_DATABASE_URL, else sqlite:///cds.db)")]


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:64]
    except Exception:
        return "cli"


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise typer.BadParameter("empty password")
    return password


def _open(db: str | None) -> Store:
    store = open_store(db, start_drainer=False)
    if not store.ready:
        typer.echo(f"database {redact(resolve_url(db))} is not reachable", err=True)
        store.close()
        raise typer.Exit(2)
    return store


def register(app: typer.Typer, rules_app: typer.Typer) -> None:
    users_app = typer.Typer(help="Users of the review page (roles: reviewer, admin).", no_args_is_help=True)
    app.add_typer(users_app, name="users")

    @users_app.command("add")
    def add(
        name: Annotated[str, typer.Argument(help="User name")],
        role: Annotated[str, typer.Option(help="reviewer or admin")] = "reviewer",
        password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin")]
        = False,
        db: DbOption = None,
    ) -> None:
        """Add a user (the password is hashed with argon2id)."""
        if role not in user_admin.ROLES:
            raise typer.BadParameter(f"--role must be one of {', '.join(user_admin.ROLES)}")
        password = _read_password(password_stdin)
        with _open(db) as store:
            try:
                with store.session() as session:
                    user_admin.add_user(session, name, password, role, actor=_actor(), actor_role="cli")
            except user_admin.UserError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from exc
        typer.echo(f"added {name} ({role})")

    @users_app.command("list")
    def list_(db: DbOption = None) -> None:
        """List users, their role and state."""
        with _open(db) as store, store.session() as session:
            table = Table("user", "role", "state", "created", "last sign-in")
            for u in user_admin.list_users(session):
                table.add_row(u.username, u.role, "disabled" if u.disabled else "active",
                              u.created_at.strftime("%Y-%m-%d %H:%M"),
                              u.last_login_at.strftime("%Y-%m-%d %H:%M") if u.last_login_at else "")
        Console().print(table)

    def _set_disabled(name: str, disabled: bool, db: str | None) -> None:
        with _open(db) as store:
            try:
                with store.session() as session:
                    user_admin.set_disabled(session, name, disabled, actor=_actor(), actor_role="cli",
                                            allow_last_admin=True)
            except user_admin.UserError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from exc
        typer.echo(f"{'disabled' if disabled else 'enabled'} {name}")

    @users_app.command("disable")
    def disable(name: Annotated[str, typer.Argument(help="User name")], db: DbOption = None) -> None:
        """Disable a user and end their sessions."""
        _set_disabled(name, True, db)

    @users_app.command("enable")
    def enable(name: Annotated[str, typer.Argument(help="User name")], db: DbOption = None) -> None:
        """Enable a disabled user again."""
        _set_disabled(name, False, db)

    @users_app.command("passwd")
    def passwd(
        name: Annotated[str, typer.Argument(help="User name")],
        password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin")]
        = False,
        db: DbOption = None,
    ) -> None:
        """Set a user's password (ends their sessions)."""
        password = _read_password(password_stdin)
        with _open(db) as store:
            try:
                with store.session() as session:
                    user_admin.set_password(session, name, password, actor=_actor(), actor_role="cli")
            except user_admin.UserError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from exc
        typer.echo(f"password of {name} changed")
