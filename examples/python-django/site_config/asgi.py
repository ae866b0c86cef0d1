"""The ASGI entry point, as `startproject` writes it, plus migrations at start-up and static
files served by Django itself (there is no separate web server in front of a program).

The migrations run in a worker thread: a server may import this module while its event loop
runs (uvicorn with --workers does), where Django refuses database work. On aleph-wasm the
worker is the runtime's deferred work (docs/python-runtime.md), which runs the same way.
"""

import os
from concurrent.futures import ThreadPoolExecutor

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application
from django.core.management import call_command

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_config.settings")

application = get_asgi_application()
with ThreadPoolExecutor(max_workers=1) as migrations:
    migrations.submit(call_command, "migrate", interactive=False, verbosity=0).result()
application = ASGIStaticFilesHandler(application)
