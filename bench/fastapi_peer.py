"""The FastAPI peer of bench/run.sh: quota's subscription route as a small
Python service would write it, reading the same row from the same SQLite file.

    QUOTA_BENCH_SQLITE=quota.db uvicorn fastapi_peer:app --workers 2
"""

import hashlib
import os
import sqlite3
import time

from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse

PER_USD = int(os.environ.get("QUOTA_PER_USD", "500000"))
UNLIMITED_USD = 100_000_000
ENABLED = 1

app = FastAPI()
db = sqlite3.connect(os.environ["QUOTA_BENCH_SQLITE"], check_same_thread=False)
QUERY = (
    "SELECT remaining, used, unlimited, expires_at, status "
    "FROM quota_tokens WHERE key_digest = ?"
)


def refused(message: str) -> JSONResponse:
    error = {"message": message, "type": "invalid_request_error", "param": None,
             "code": "invalid_api_key"}
    return JSONResponse({"error": error}, 401, {"WWW-Authenticate": "Bearer"})


@app.get("/v1/dashboard/billing/subscription")
@app.get("/dashboard/billing/subscription")
async def subscription(authorization: str = Header(default="")):
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.startswith("sk-"):
        return refused("no bearer key")
    digest = hashlib.sha256(key.encode()).hexdigest()
    row = db.execute(QUERY, (digest,)).fetchone()
    if row is None or row[4] != ENABLED or (row[3] and row[3] <= time.time()):
        return refused("unknown, disabled or expired key")
    remaining, used, unlimited, expires_at, _ = row
    limit = UNLIMITED_USD if unlimited else (remaining + used) // PER_USD
    return {"object": "billing_subscription", "has_payment_method": True,
            "soft_limit_usd": limit, "hard_limit_usd": limit,
            "system_hard_limit_usd": limit, "access_until": expires_at or 0}
