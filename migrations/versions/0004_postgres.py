"""PostgreSQL: a full-text index over captions (SQLite's is the FTS5 table of 0002)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# 'simple': lower-cased words, no stemming and no stop words, like FTS5's unicode61 tokenizer,
# so a keyword matches the same captions on both databases. A generated column stays in step
# with the text without triggers.
_PG = [
    "ALTER TABLE captions ADD COLUMN text_tsv tsvector "
    "GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED",
    "CREATE INDEX ix_captions_text_tsv ON captions USING gin (text_tsv)",
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in _PG:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_captions_text_tsv")
        op.execute("ALTER TABLE captions DROP COLUMN IF EXISTS text_tsv")
