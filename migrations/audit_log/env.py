from foundry.db.alembic_env import run

run("actors.audit_log.schema")
