"""Initial schema: evaluations, alerts, orders, feedback, decisions, users, sessions, audit log.

The audit log is append-only in the database as well as in code: triggers refuse UPDATE and
DELETE (and TRUNCATE on PostgreSQL).

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TABLES = ("audit_log", "batch_runs", "users", "evaluations", "review_sessions", "alerts", "orders",
           "prescriber_feedback", "review_decisions")

_SQLITE_TRIGGERS = (
    """CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
       BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
    """CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
       BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
)
_PG_TRIGGERS = (
    """CREATE FUNCTION cds_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$""",
    """CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
       FOR EACH ROW EXECUTE FUNCTION cds_audit_log_append_only()""",
    """CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
       FOR EACH STATEMENT EXECUTE FUNCTION cds_audit_log_append_only()""",
)


def upgrade() -> None:
    op.create_table("audit_log",
        sa.Column("id", _BIGID, autoincrement=True, nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=32), nullable=True),
        sa.Column("target_id", sa.String(length=256), nullable=True),
        sa.Column("detail", _JSON, nullable=False),
        sa.Column("remote_addr", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id")
    )
    op.create_index("ix_audit_log_action", "audit_log", ["action"])
    op.create_index("ix_audit_log_at", "audit_log", ["at"])

    op.create_table("batch_runs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("params", _JSON, nullable=False),
        sa.Column("counts", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("id")
    )

    op.create_table("users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("last_login_at", _TS, nullable=True),
        sa.CheckConstraint("role IN ('reviewer', 'admin')",
                           name="ck_users_role"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username")
    )

    op.create_table("evaluations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("hook_instance", sa.String(length=128), nullable=True),
        sa.Column("dedup_key", sa.String(length=64), nullable=True),
        sa.Column("hook", sa.String(length=64), nullable=True),
        sa.Column("service_id", sa.String(length=128), nullable=True),
        sa.Column("patient_ref", sa.String(length=256), nullable=True),
        sa.Column("encounter_ref", sa.String(length=256), nullable=True),
        sa.Column("user_ref", sa.String(length=256), nullable=True),
        sa.Column("order_key", sa.String(length=256), nullable=True),
        sa.Column("as_of", _TS, nullable=False),
        sa.Column("recorded_at", _TS, nullable=False),
        sa.Column("pack_id", sa.String(length=64), nullable=False),
        sa.Column("pack_version", sa.String(length=32), nullable=False),
        sa.Column("pack_hash", sa.String(length=128), nullable=False),
        sa.Column("site_hash", sa.String(length=128), nullable=True),
        sa.Column("batch_run_id", sa.String(length=64), nullable=True),
        sa.CheckConstraint("source IN ('hook', 'evaluate', 'batch')",
                           name="ck_evaluations_source"),
        sa.ForeignKeyConstraint(["batch_run_id"], ["batch_runs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedup_key")
    )
    op.create_index("ix_evaluations_as_of", "evaluations", ["as_of"])
    op.create_index("ix_evaluations_batch_run_id", "evaluations", ["batch_run_id"])
    op.create_index("ix_evaluations_order_key", "evaluations", ["order_key"])
    op.create_index("ix_evaluations_patient_ref", "evaluations", ["patient_ref"])

    op.create_table("review_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("last_seen_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_hash")
    )
    op.create_index("ix_review_sessions_expires_at", "review_sessions", ["expires_at"])
    op.create_index("ix_review_sessions_user_id", "review_sessions", ["user_id"])

    op.create_table("alerts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("evaluation_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("rule_id", sa.String(length=64), nullable=False),
        sa.Column("tier_id", sa.String(length=96), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("summary", sa.String(length=200), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("evidence", _JSON, nullable=False),
        sa.Column("missing", _JSON, nullable=False),
        sa.Column("not_assessed", _JSON, nullable=False),
        sa.Column("suggestions", _JSON, nullable=False),
        sa.Column("sources", _JSON, nullable=False),
        sa.Column("pack_id", sa.String(length=64), nullable=False),
        sa.Column("pack_version", sa.String(length=32), nullable=False),
        sa.Column("pack_hash", sa.String(length=128), nullable=False),
        sa.Column("pack_url", sa.Text(), nullable=True),
        sa.Column("approval", sa.String(length=48), nullable=True),
        sa.Column("card_uuid", sa.String(length=64), nullable=True),
        sa.Column("shown", sa.Boolean(), nullable=False),
        sa.Column("prescriber_outcome", sa.String(length=16), nullable=True),
        sa.Column("prescriber_outcome_at", _TS, nullable=True),
        sa.Column("suggestion_accepted", sa.Boolean(), nullable=True),
        sa.Column("review_status", sa.String(length=16), nullable=False),
        sa.Column("reviewed_at", _TS, nullable=True),
        sa.Column("reviewed_by", sa.Integer(), nullable=True),
        sa.CheckConstraint("prescriber_outcome IS NULL OR prescriber_outcome IN ('accepted', 'overridden')",
                           name="ck_alerts_prescriber_outcome"),
        sa.CheckConstraint("review_status IN ('open', 'acknowledged', 'overridden')",
                           name="ck_alerts_review_status"),
        sa.CheckConstraint("severity IN ('info', 'warning', 'critical')",
                           name="ck_alerts_severity"),
        sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["reviewed_by"], ["users.id"]),
        sa.PrimaryKeyConstraint("id")
    )
    op.create_index("ix_alerts_card_uuid", "alerts", ["card_uuid"])
    op.create_index("ix_alerts_category", "alerts", ["category"])
    op.create_index("ix_alerts_evaluation_id", "alerts", ["evaluation_id"])
    op.create_index("ix_alerts_review_status", "alerts", ["review_status"])
    op.create_index("ix_alerts_rule_id", "alerts", ["rule_id"])
    op.create_index("ix_alerts_rule_severity", "alerts", ["rule_id", "severity"])

    op.create_table("orders",
        sa.Column("evaluation_id", sa.String(length=36), nullable=False),
        sa.Column("order_key", sa.String(length=256), nullable=True),
        sa.Column("body", _JSON, nullable=False),
        sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("evaluation_id")
    )

    op.create_table("prescriber_feedback",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("alert_id", sa.String(length=36), nullable=False),
        sa.Column("card_uuid", sa.String(length=64), nullable=False),
        sa.Column("service_id", sa.String(length=128), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("accepted_suggestions", _JSON, nullable=False),
        sa.Column("override_reason_code", sa.String(length=64), nullable=True),
        sa.Column("override_reason_display", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("user_id", sa.String(length=256), nullable=True),
        sa.Column("outcome_timestamp", _TS, nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.CheckConstraint("outcome IN ('accepted', 'overridden')",
                           name="ck_feedback_outcome"),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id")
    )
    op.create_index("ix_prescriber_feedback_alert_id", "prescriber_feedback", ["alert_id"])

    op.create_table("review_decisions",
        sa.Column("id", _BIGID, autoincrement=True, nullable=False),
        sa.Column("alert_id", sa.String(length=36), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reason_code", sa.String(length=64), nullable=True),
        sa.Column("reason_display", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("reviewer_id", sa.Integer(), nullable=False),
        sa.Column("decided_at", _TS, nullable=False),
        sa.CheckConstraint("decision IN ('acknowledged', 'overridden')",
                           name="ck_decisions_decision"),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["reviewer_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id")
    )
    op.create_index("ix_review_decisions_alert_id", "review_decisions", ["alert_id"])

    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": _SQLITE_TRIGGERS, "postgresql": _PG_TRIGGERS}.get(dialect, ()):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS cds_audit_log_append_only() CASCADE")
    for table in reversed(_TABLES):
        op.drop_table(table)
