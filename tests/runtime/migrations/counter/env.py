from foundry.db.alembic_env import run

run("tests.runtime.counter_role")
