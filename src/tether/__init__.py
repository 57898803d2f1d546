"""tether: chunked, resumable uploads that stay correct whatever route a request takes."""

__version__ = "0.1.0"
