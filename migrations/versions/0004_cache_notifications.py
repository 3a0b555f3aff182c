"""notify the api's read caches of every committed change they depend on

Revision ID: 0004
Revises: 0003

Messages on channel `picstore_cache` (see picstore/cache.py): `auth` when keys, users, roles, grants or
teams change; `image:<uuid>` when an image or one of its outputs changes; `images` when storage
locations (the URL bases of every image) change. A key's `last_used` stamp changes nothing a cache
holds, so it sends nothing.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AUTH_TABLES = ("teams", "users", "roles", "user_roles", "role_permissions", "api_key_permissions")


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION picstore_cache_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        -- TG_ARGV[0] is the message; a row trigger's TG_ARGV[1] names the column appended to it.
        DECLARE
            changed jsonb;
        BEGIN
            IF TG_ARGV[1] IS NULL THEN
                PERFORM pg_notify('picstore_cache', TG_ARGV[0]);
            ELSE
                IF TG_OP = 'DELETE' THEN changed := to_jsonb(OLD); ELSE changed := to_jsonb(NEW); END IF;
                PERFORM pg_notify('picstore_cache', TG_ARGV[0] || (changed ->> TG_ARGV[1]));
            END IF;
            RETURN NULL;
        END $$
        """
    )
    for table in AUTH_TABLES:
        op.execute(
            f"CREATE TRIGGER picstore_cache AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION picstore_cache_notify('auth')"
        )
    op.execute(
        "CREATE TRIGGER picstore_cache AFTER INSERT OR DELETE OR TRUNCATE ON api_keys "
        "FOR EACH STATEMENT EXECUTE FUNCTION picstore_cache_notify('auth')"
    )
    op.execute(
        "CREATE TRIGGER picstore_cache_update AFTER UPDATE ON api_keys FOR EACH ROW "
        "WHEN (to_jsonb(OLD) - 'last_used' IS DISTINCT FROM to_jsonb(NEW) - 'last_used') "
        "EXECUTE FUNCTION picstore_cache_notify('auth')"
    )
    for table, column in (("base_images", "id"), ("output_images", "base_image_id")):
        op.execute(
            f"CREATE TRIGGER picstore_cache AFTER INSERT OR UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION picstore_cache_notify('image:', '{column}')"
        )
        op.execute(
            f"CREATE TRIGGER picstore_cache_truncate AFTER TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION picstore_cache_notify('images')"
        )
    op.execute(
        "CREATE TRIGGER picstore_cache AFTER UPDATE OR DELETE OR TRUNCATE ON storage_locations "
        "FOR EACH STATEMENT EXECUTE FUNCTION picstore_cache_notify('images')"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER picstore_cache ON storage_locations")
    for table in ("base_images", "output_images"):
        op.execute(f"DROP TRIGGER picstore_cache_truncate ON {table}")
        op.execute(f"DROP TRIGGER picstore_cache ON {table}")
    op.execute("DROP TRIGGER picstore_cache_update ON api_keys")
    op.execute("DROP TRIGGER picstore_cache ON api_keys")
    for table in AUTH_TABLES:
        op.execute(f"DROP TRIGGER picstore_cache ON {table}")
    op.execute("DROP FUNCTION picstore_cache_notify()")
