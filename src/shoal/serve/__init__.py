"""Serving runtime.

``buffer``, ``costmodel``, ``policy`` and ``scheduler`` are the deciding code: stdlib only, no
torch, callers pass the clock. Workers, runners and the HTTP layer build on them.
"""
