"""Rules of labdock, in plain Python: no tornado, no SQLAlchemy, no Docker."""
