"""The work queue's items kept as rows (issue #18 item 6): ``queue_items``, one per open
(patient, encounter, order, rule tier, source kind), filled here from the open alerts (backfill)
and kept by the writer and reviewer decisions (store/queue_items.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "queue_items",
        sa.Column("o", sa.String(256), nullable=False),
        sa.Column("tier_id", sa.String(96), nullable=False),
        sa.Column("src", sa.String(16), nullable=False),
        sa.Column("p", sa.String(256), nullable=False),
        sa.Column("e", sa.String(256), nullable=False),
        sa.Column("rule_id", sa.String(64), nullable=False),
        sa.Column("sev", sa.Integer(), nullable=False),
        sa.Column("summary", sa.String(200), nullable=False),
        sa.Column("alert_id", sa.String(36), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("alert_rows", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("o", "tier_id", "src", "p", "e"),
    )
    op.create_index("ix_queue_items_p_e", "queue_items", ["p", "e"])
    op.create_index("ix_queue_items_rule_id", "queue_items", ["rule_id"])
    op.create_index("ix_queue_items_src", "queue_items", ["src"])
    from cds_engine.store.queue_items import rebuild_queue  # backfill: the same SQL the writer runs

    rebuild_queue(op.get_bind())


def downgrade() -> None:
    op.drop_table("queue_items")
