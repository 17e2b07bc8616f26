"""WSGI entry for gunicorn: `server.wsgi:app`, built in each worker from `$FTH_SERVE_CONFIG` (JSON of ServeConfig).

`fth serve` sets the variable; a hand-written gunicorn command may too. Without preload, the master never imports
this module, so each worker loads its own model and the master stays free of torch and CUDA.
"""

from __future__ import annotations

import json
import os

from server.app import create_app

app = create_app(json.loads(os.environ.get("FTH_SERVE_CONFIG", "{}")))
