"""`broadcaster demo`: a simulated metro city, an embedded broker, the broadcaster and its web pages in one process."""
