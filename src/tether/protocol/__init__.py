"""Sans-IO protocol layer: requests in, commands out; results in, responses out.

tus 1.0 and the IETF Resumable Uploads draft are parsed at the edge into the same
commands, so the engine never asks which dialect it serves.
"""
