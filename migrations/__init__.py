"""alembic environments, one per role (shipped with the package so installed copies can migrate)."""
