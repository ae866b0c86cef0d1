"""The WSGI entry point, as `startproject` writes it, plus migrations at start-up."""

import os

from django.core.management import call_command
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_config.settings")

application = get_wsgi_application()
call_command("migrate", interactive=False, verbosity=0)
