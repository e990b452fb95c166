"""Reading the operator's static GTFS, for `broadcaster.feeds.network.load_network`:

- `files`: the feed's files in a folder or a zip, read as CSV tables; errors name the file and line;
- `names`: lines (routes.txt), stations (stops.txt, each stop mapped up to its station), translations;
- `patterns`: trips.txt and stop_times.txt, streamed into stop patterns; each line's most frequent one.
"""
