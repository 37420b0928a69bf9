"""App factory, templates, static files and shared view helpers."""
