"""Routing engine: queues, rules, skills with levels, presence history, offers, timers, stats

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 15:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "queues",
        sa.Column("id", _ID, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("updated_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queues")),
        sa.UniqueConstraint("name", name=op.f("uq_queues_name")),
    )
    op.create_table(
        "routing_rules",
        sa.Column("id", _ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("conditions", sa.JSON(), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routing_rules")),
    )
    op.create_table(
        "agent_skills",
        sa.Column("agent_id", _ID, nullable=False),
        sa.Column("skill", sa.String(length=64), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_agent_skills_agent_id_agents")
        ),
        sa.PrimaryKeyConstraint("agent_id", "skill", name=op.f("pk_agent_skills")),
    )
    op.create_table(
        "presence_history",
        sa.Column("id", _ID, nullable=False),
        sa.Column("agent_id", _ID, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("since", _WHEN, nullable=False),
        sa.Column("until", _WHEN, nullable=True),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_presence_history_agent_id_agents")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_presence_history")),
    )
    op.create_index(
        op.f("ix_presence_history_agent_id_until"), "presence_history", ["agent_id", "until"]
    )
    op.create_table(
        "offers",
        sa.Column("id", _ID, nullable=False),
        sa.Column("ticket_id", _ID, nullable=False),
        sa.Column("agent_id", _ID, nullable=False),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("expires_at", _WHEN, nullable=False),
        sa.Column("decided_at", _WHEN, nullable=True),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_offers_agent_id_agents")
        ),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["tickets.id"], name=op.f("fk_offers_ticket_id_tickets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_offers")),
    )
    op.create_index(op.f("ix_offers_agent_id_status"), "offers", ["agent_id", "status"])
    op.create_index(op.f("ix_offers_ticket_id_agent_id"), "offers", ["ticket_id", "agent_id"])
    op.create_index(
        "uq_offers_pending_ticket",
        "offers",
        ["ticket_id"],
        unique=True,
        sqlite_where=sa.text("status = 'pending'"),
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "routing_timers",
        sa.Column("id", _ID, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subject_id", _ID, nullable=False),
        sa.Column("due_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routing_timers")),
    )
    op.create_index(op.f("ix_routing_timers_due_at"), "routing_timers", ["due_at"])
    op.create_index(
        op.f("ix_routing_timers_kind_subject_id"), "routing_timers", ["kind", "subject_id"]
    )
    op.create_table(
        "queue_stats",
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("offered", sa.Integer(), nullable=False),
        sa.Column("answered", sa.Integer(), nullable=False),
        sa.Column("answered_in_sla", sa.Integer(), nullable=False),
        sa.Column("abandoned", sa.Integer(), nullable=False),
        sa.Column("wait_seconds", sa.Float(), nullable=False),
        sa.Column("handled", sa.Integer(), nullable=False),
        sa.Column("handle_seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("queue", "day", name=op.f("pk_queue_stats")),
    )
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("missed_offers", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("last_offered_at", _WHEN, nullable=True))
        batch_op.add_column(sa.Column("last_assigned_at", _WHEN, nullable=True))
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.alter_column("missed_offers", server_default=None)
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("waiting_since", _WHEN, nullable=True))
        batch_op.create_index(
            batch_op.f("ix_tickets_queue_waiting_since"), ["queue", "waiting_since"]
        )


def downgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tickets_queue_waiting_since"))
        batch_op.drop_column("waiting_since")
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_column("last_assigned_at")
        batch_op.drop_column("last_offered_at")
        batch_op.drop_column("missed_offers")
    op.drop_table("queue_stats")
    op.drop_index(op.f("ix_routing_timers_kind_subject_id"), table_name="routing_timers")
    op.drop_index(op.f("ix_routing_timers_due_at"), table_name="routing_timers")
    op.drop_table("routing_timers")
    op.drop_index("uq_offers_pending_ticket", table_name="offers")
    op.drop_index(op.f("ix_offers_ticket_id_agent_id"), table_name="offers")
    op.drop_index(op.f("ix_offers_agent_id_status"), table_name="offers")
    op.drop_table("offers")
    op.drop_index(op.f("ix_presence_history_agent_id_until"), table_name="presence_history")
    op.drop_table("presence_history")
    op.drop_table("agent_skills")
    op.drop_table("routing_rules")
    op.drop_table("queues")
