"""The ASGI app gunicorn's uvicorn workers serve: the Falcon app, told at once when a client disconnects."""

from api.app import create_app
from api.disconnects import DisconnectSignals

app = DisconnectSignals(create_app())
