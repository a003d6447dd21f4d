from foundry.db.alembic_env import run

run("actors.sandbox.schema")
