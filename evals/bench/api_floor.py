"""The floor of ``custctx bench --api``: a bare FastAPI app that answers the context route from a
dict (the JSON the real API answered, loaded from a file), under uvicorn with the settings
``custctx serve api`` is run with.

``python -m evals.bench.api_floor PORT ANSWERS.json [--workers N] [--no-access-log]``: the same
options as ``custctx serve api`` (several workers load the answers again in each process, from the
file named by ``CUSTCTX_BENCH_FLOOR_ANSWERS``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ANSWERS_ENV = "CUSTCTX_BENCH_FLOOR_ANSWERS"


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


def app_from_env() -> Any:
    """The floor app of the answers file ``CUSTCTX_BENCH_FLOOR_ANSWERS`` names (a worker's factory)."""
    return floor_app(json.loads(Path(os.environ[ANSWERS_ENV]).read_text(encoding="utf-8")))


def main(argv: list[str]) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m evals.bench.api_floor")
    parser.add_argument("port", type=int)
    parser.add_argument("answers", type=Path)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv[1:])
    os.environ[ANSWERS_ENV] = str(args.answers.resolve())
    # the same call as agent.interfaces.http.serve makes (its default log level included)
    if args.workers > 1:
        uvicorn.run("evals.bench.api_floor:app_from_env", factory=True,
                    workers=args.workers, host="127.0.0.1", port=args.port, log_level="info",
                    access_log=args.access_log)
    else:
        uvicorn.run(app_from_env(), host="127.0.0.1", port=args.port, log_level="info", access_log=args.access_log)


if __name__ == "__main__":
    main(sys.argv)
