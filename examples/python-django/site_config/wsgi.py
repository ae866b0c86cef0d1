"""The WSGI entry point, as `startproject` writes it, plus the same migrations at start-up as
`asgi.py` (run in a worker thread there; here too, so both entries behave alike).

On aleph-wasm the runtime recognises `application(environ, start_response)` and serves it
through its WSGI adapter (docs/python-runtime.md): `site_config.wsgi:application`.
"""

import os
from concurrent.futures import ThreadPoolExecutor

from django.core.management import call_command
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_config.settings")

application = get_wsgi_application()
with ThreadPoolExecutor(max_workers=1) as migrations:
    migrations.submit(call_command, "migrate", interactive=False, verbosity=0).result()
