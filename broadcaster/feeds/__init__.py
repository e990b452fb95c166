"""Feed readers: bytes from the network or disk in, domain objects out."""
