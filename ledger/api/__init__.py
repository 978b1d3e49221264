"""The HTTP service (DESIGN 5.4): FastAPI on uvicorn, bearer tokens, group commit.

`ledger.api.app.create_app` builds the application. This package imports nothing heavy
itself, so the CLI's `token` commands start fast.
"""
