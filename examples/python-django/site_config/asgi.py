"""The ASGI entry point, as `startproject` writes it, plus migrations at start-up and static
files served by Django itself (there is no separate web server in front of a program)."""

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application
from django.core.management import call_command

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_config.settings")

application = get_asgi_application()
call_command("migrate", interactive=False, verbosity=0)
application = ASGIStaticFilesHandler(application)
