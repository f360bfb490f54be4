"""``patients`` (who the patient is, one row per patient reference) and ``evaluations.order_base``.

``patients`` holds the name, birth date and MRN-type identifiers as the EHR sent them, once per
patient reference (never copied into evaluations); rows are purged ``demographics_retention_days``
after the patient's last alert is closed (``store/patients.py``). ``order_base`` is the order's
identity without its ordering session — (issuer, patient, encounter, draft id, product) hashed —
so the writer can give order-select and order-sign of one order one ``order_key`` while a draft
id the client reuses in a later session starts a new one (``store/order_sessions.py``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("patient_ref", sa.String(length=256), primary_key=True),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("birth_date", sa.String(length=32), nullable=True),
        sa.Column("identifiers", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_patients_updated_at", "patients", ["updated_at"])
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("order_base", sa.String(length=64), nullable=True))
    op.create_index("ix_evaluations_order_base_as_of", "evaluations", ["order_base", "as_of"])


def downgrade() -> None:
    op.drop_index("ix_evaluations_order_base_as_of", table_name="evaluations")
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("order_base")
    op.drop_index("ix_patients_updated_at", table_name="patients")
    op.drop_table("patients")
