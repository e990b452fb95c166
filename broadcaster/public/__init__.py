"""The commuters' web site (docs/commuters.md): Atom feeds for the network, each line and each station, and the
commuter page, served by `runner.serve` when the config has a `[public]` section.

Public and read-only: nothing here takes a token or changes state. One job per module:

- `app`: the Starlette app, putting the feeds' and the page's routes together;
- `atom_feeds`: the Atom feeds for the network, each line and each station, and their index (`/feeds/`);
- `feed_items`: what a feed lists, read from the state and the outbox's recent notices;
- `conditional`: `ETag`, `Last-Modified` and the conditional GET answers;
- `page`: the commuter page at `/` and the JSON it reads (`/page/network.json`, `/page/config.json`);
- `server`: `PublicServer`, the app on its configured address (with broadcaster.webserver).
"""

from broadcaster.public.app import public_app
from broadcaster.public.server import PublicServer

__all__ = ["PublicServer", "public_app"]
