"""The commuters' web site (docs/commuters.md): Atom feeds for the network, each line and each station, and the
commuter page, served by `runner.serve` when the config has a `[public]` section.

Public and read-only: nothing here takes a token or changes state. One job per module:

- `app`: the Starlette app, putting the feeds' and the page's routes together;
- `server`: `PublicServer`, the app on its configured address (with broadcaster.webserver).
"""

from broadcaster.public.app import public_app
from broadcaster.public.server import PublicServer

__all__ = ["PublicServer", "public_app"]
