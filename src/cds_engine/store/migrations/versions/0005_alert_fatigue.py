"""Alert-fatigue state and the ``patient-view`` source label (issue 21).

* ``evaluations.source`` may be ``patient-view``: chart-open monitoring is kept apart from order
  checks in the review page and analytics.
* ``card_displays`` (shown once per patient/encounter or day and tier, until the facts change),
  ``fatigue_cards`` (the key an override starts a window on, the reasons the card offered, and why a
  card was not shown) and ``suppressions`` (windows started by a prescriber override). Shared by
  every worker and host through this database (``store/fatigue.py``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _source_check(values: tuple[str, ...]) -> None:
    check = "source IN ({})".format(", ".join(f"'{v}'" for v in values))
    with op.batch_alter_table("evaluations", recreate="auto") as batch:
        batch.drop_constraint("ck_evaluations_source", type_="check")
        batch.create_check_constraint("ck_evaluations_source", sa.text(check))


def upgrade() -> None:
    _source_check(("hook", "evaluate", "batch", "patient-view"))
    op.create_table(
        "card_displays",
        sa.Column("scope_key", sa.String(64), nullable=False),
        sa.Column("tier_id", sa.String(96), nullable=False),
        sa.Column("facts_hash", sa.String(64), nullable=False),
        sa.Column("first_shown_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("scope_key", "tier_id", "facts_hash"),
    )
    op.create_table(
        "fatigue_cards",
        sa.Column("card_uuid", sa.String(64), primary_key=True),
        sa.Column("pack_id", sa.String(64), nullable=False),
        sa.Column("tier_id", sa.String(96), nullable=False),
        sa.Column("suppress_key", sa.String(64), nullable=False),
        sa.Column("client_key", sa.String(64), nullable=False),
        sa.Column("override_reasons", _JSON, nullable=False),
        sa.Column("suppressed_by", sa.Text(), nullable=True),
        sa.Column("recorded_at", _TS, nullable=False),
    )
    op.create_table(
        "suppressions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("suppress_key", sa.String(64), nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("card_uuid", sa.String(64), nullable=False),
        sa.Column("reason_code", sa.String(64), nullable=False),
        sa.Column("by_override", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_suppressions_key_started", "suppressions", ["suppress_key", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_suppressions_key_started", table_name="suppressions")
    op.drop_table("suppressions")
    op.drop_table("fatigue_cards")
    op.drop_table("card_displays")
    # keep the rows: their ``hook`` column still says patient-view
    op.execute("UPDATE evaluations SET source = 'hook' WHERE source = 'patient-view'")
    _source_check(("hook", "evaluate", "batch"))
