"""The analytics rollup (issue #18 items 5 and 6): episodes and their daily sums, kept by the writer.

``rollup_episodes`` / ``rollup_daily`` / ``rollup_episode_reasons`` / ``rollup_reasons``
(store/rollup.py), filled here from the rows already stored (backfill), so analytics over a year
or "all" read a few thousand daily rows instead of every alert.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SUMS = ("alert_rows", "fired", "silent", "suppressed", "never_shown_kept", "p_decided", "p_overridden",
         "s_decided", "s_accepted", "r_decided", "r_overridden")


def _episode_key() -> list[sa.Column]:
    return [sa.Column("o", sa.String(256), nullable=False), sa.Column("k", sa.String(96), nullable=False),
            sa.Column("src", sa.String(16), nullable=False), sa.Column("p", sa.String(256), nullable=False)]


def upgrade() -> None:
    op.create_table(
        "rollup_episodes", *_episode_key(),
        sa.Column("day", sa.Date(), nullable=False), sa.Column("pack_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False), sa.Column("sev", sa.Integer(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("alert_rows", sa.Integer(), nullable=False),
        sa.Column("shown", sa.Integer(), nullable=False),
        sa.Column("carried", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("review", sa.String(16), nullable=True),
        sa.Column("kept", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("o", "k", "src", "p"),
    )
    op.create_table(
        "rollup_daily",
        sa.Column("day", sa.Date(), nullable=False), sa.Column("pack_id", sa.String(64), nullable=False),
        sa.Column("k", sa.String(96), nullable=False), sa.Column("src", sa.String(16), nullable=False),
        sa.Column("sev", sa.Integer(), nullable=False), sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        *(sa.Column(name, sa.Integer(), nullable=False) for name in _SUMS),
        sa.PrimaryKeyConstraint("day", "pack_id", "k", "src", "sev", "kind"),
    )
    op.create_table(
        "rollup_episode_reasons", *_episode_key(),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False), sa.Column("pack_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("o", "k", "src", "p", "reason"),
    )
    op.create_table(
        "rollup_reasons",
        sa.Column("day", sa.Date(), nullable=False), sa.Column("pack_id", sa.String(64), nullable=False),
        sa.Column("k", sa.String(96), nullable=False), sa.Column("src", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False), sa.Column("orders", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", "pack_id", "k", "src", "reason"),
    )
    # backfill from the rows already stored (the same SQL the writer runs per order)
    from cds_engine.store.rollup import rebuild

    rebuild(op.get_bind())


def downgrade() -> None:
    for table in ("rollup_reasons", "rollup_episode_reasons", "rollup_daily", "rollup_episodes"):
        op.drop_table(table)
