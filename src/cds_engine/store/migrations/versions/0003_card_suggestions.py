"""``alerts.card_suggestions``: how many suggestions the card the prescriber saw carried.

The alert's own suggestion list is what the rule offers; the card may carry fewer (a suggestion
the pack itself would flag is dropped before the card is sent). Suggestion acceptance is counted
over shown cards that carried one, so the count is kept per alert. NULL: not known (batch rows,
rows stored before this revision).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("card_suggestions", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("card_suggestions")
