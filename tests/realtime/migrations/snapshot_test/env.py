from foundry.db.alembic_env import run

run("tests.realtime.snapshot_role")
