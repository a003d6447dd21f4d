from foundry.db.alembic_env import run

run("actors.github_data.schema")
