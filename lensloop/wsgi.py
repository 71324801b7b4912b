"""WSGI entry point (gunicorn lensloop.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lensloop.settings")
application = get_wsgi_application()
