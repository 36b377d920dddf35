"""The data store: schema, engines, migrations and repositories."""
