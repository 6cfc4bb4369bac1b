"""GET /doctor: `armwheels doctor` for devices, as one Python file with this farm's URL
written in (`curl -s http://FARM/doctor | python3 - PROJECT`). The device needs nothing
but Python and pip (common/doctor.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from common import doctor
from master.web.context import MasterContext

SOURCE = Path(doctor.__file__)
_FARM_LINE = re.compile(r'^FARM = ""$', re.MULTILINE)


def script_for(farm_url: str) -> str:
    """The doctor's source with `farm_url` as the farm it asks."""
    source = SOURCE.read_text()
    written, count = _FARM_LINE.subn(f"FARM = {json.dumps(farm_url)}", source, count=1)
    if count != 1:
        raise RuntimeError(f"{SOURCE} has no FARM line to fill in")
    return written


def router(ctx: MasterContext) -> APIRouter:
    app = APIRouter()
    script = script_for(ctx.settings.master.public_url)

    @app.get("/doctor", response_class=PlainTextResponse)
    def doctor_script() -> PlainTextResponse:
        return PlainTextResponse(script, media_type="text/x-python; charset=utf-8")

    return app
