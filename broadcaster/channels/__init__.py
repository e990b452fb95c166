"""Output channels: each delivers rendered notices or state to one kind of destination."""
