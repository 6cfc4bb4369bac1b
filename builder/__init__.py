"""The builder node: a Celery worker that turns one sdist into one repaired wheel per job."""
