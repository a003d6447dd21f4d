from foundry.db.alembic_env import run

run("actors.task.schema")
