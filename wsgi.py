"""WSGI entry point for gunicorn: ``gunicorn wsgi:app``."""

from adapter import create_app

app = create_app()
