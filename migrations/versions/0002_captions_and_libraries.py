"""captions (with an FTS5 keyword index) and libraries

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_FTS = [
    "CREATE VIRTUAL TABLE captions_fts USING fts5(text, content='captions', content_rowid='rowid')",
    """CREATE TRIGGER captions_ai AFTER INSERT ON captions BEGIN
         INSERT INTO captions_fts(rowid, text) VALUES (new.rowid, new.text);
       END""",
    """CREATE TRIGGER captions_ad AFTER DELETE ON captions BEGIN
         INSERT INTO captions_fts(captions_fts, rowid, text) VALUES ('delete', old.rowid, old.text);
       END""",
    """CREATE TRIGGER captions_au AFTER UPDATE ON captions BEGIN
         INSERT INTO captions_fts(captions_fts, rowid, text) VALUES ('delete', old.rowid, old.text);
         INSERT INTO captions_fts(rowid, text) VALUES (new.rowid, new.text);
       END""",
]


def upgrade() -> None:
    op.create_table(
        "captions",
        sa.Column("content_hash", sa.String(length=32), nullable=False),
        sa.Column("captioner", sa.String(length=200), nullable=False),
        sa.Column("text", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("content_hash", "captioner"),
    )
    op.create_table(
        "libraries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "path",
            sa.String().with_variant(sa.String(collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("added_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("path"),
    )
    if op.get_bind().dialect.name != "sqlite":
        # PostgreSQL's keyword index over captions comes with 0004; no PostgreSQL database
        # predates the libraries table, so there are none to fill in.
        return
    for statement in _FTS:
        op.execute(statement)
    # Homes indexed before libraries were recorded: their images' folders are the libraries.
    op.execute(
        """INSERT OR IGNORE INTO libraries (path, added_at)
           SELECT DISTINCT rtrim(rtrim(path, replace(path, '/', '')), '/'), CURRENT_TIMESTAMP
           FROM images"""
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS captions_fts")
        for trigger in ("captions_ai", "captions_ad", "captions_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.drop_table("libraries")
    op.drop_table("captions")
