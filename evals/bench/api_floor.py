"""The floor of ``custctx bench --api``: a bare FastAPI app that answers the context route from a
dict (the JSON the real API answered, loaded from a file), under uvicorn with the settings
``custctx serve api`` uses. ``python -m evals.bench.api_floor PORT ANSWERS.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def floor_app(answers: dict[str, Any]) -> Any:
    """Two routes and nothing else: ``/healthz`` and the context route, answered from ``answers``."""
    from fastapi import FastAPI, HTTPException

    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/v1/customers/{ref}/context")
    async def context(ref: str) -> dict[str, Any]:
        if ref not in answers:
            raise HTTPException(404, "not found")
        return answers[ref]

    return app


def main(argv: list[str]) -> None:
    import uvicorn

    port, path = int(argv[1]), Path(argv[2])
    # the same call as agent.interfaces.http.serve makes (its default log level included)
    uvicorn.run(floor_app(json.loads(path.read_text(encoding="utf-8"))), host="127.0.0.1", port=port,
                log_level="info")


if __name__ == "__main__":
    main(sys.argv)
