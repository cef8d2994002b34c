"""The anyband REST service (FastAPI)."""
