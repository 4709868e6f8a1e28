"""The dashboard (/ui): views, charts, templates, static files."""
