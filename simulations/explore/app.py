"""The explorer's web app: a Starlette app serving one static page and a small JSON API over the events of one
or more sources (a run directory, or a chain at an RPC URL). Every fact comes from chain/provenance.py and
chain/events.py; the files a source's run directories hold (config.json, the store) are checked against them."""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from chain import provenance
from chain.errors import ArtifactError, reported_errors
from chain.identity import Domain
from chain.registry import ROLES
from chain.safejson import bounded_json

STATIC = Path(__file__).parent / "static"
_HASH = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
# the page loads nothing from anywhere else, and no other site may frame it
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass
class Source:
    """Where a set of events came from: a run directory, or a chain at an RPC URL (with the run directories
    that recorded on it, for their files)."""

    label: str
    events: list[dict]
    info: dict  # chain.json, or {contract, chain_id, rpc_url}
    roots: list[Path] = field(default_factory=list)

    proofs_error: str | None = None

    @functools.cached_property
    def proofs(self) -> dict:
        """What provenance needs to believe a Merkle root's publications: the run directories holding their
        proofs, and the registry's EIP-712 domain their signatures are checked in. Checked once: a proofs file
        that fails leaves every root unexpanded (its publications unproven), said in `proofs_error`, rather
        than failing every page."""
        chain_id, contract = self.info.get("chain_id"), self.info.get("contract")
        domain = Domain(chain_id=int(chain_id), contract=contract) if chain_id and contract else None
        try:
            provenance.index_events(self.events, self.roots, domain)
        except ArtifactError as exc:
            self.proofs_error = str(exc)
            return {"roots": [], "domain": None}
        return {"roots": self.roots, "domain": domain}


class Explorer:
    """The sources, read by `load` at start and again on /api/reload, and what the API derives from them."""

    def __init__(self, load: Callable[[], list[Source]]):
        self._load = load
        self._lock = threading.Lock()
        self.sources = load()

    def reload(self) -> None:
        sources = self._load()
        with self._lock:
            self.sources = sources

    def source(self, request: Request) -> Source:
        try:
            return self.sources[int(request.query_params.get("source", "0"))]
        except (ValueError, IndexError):
            raise _NotFound("no such source") from None


class _NotFound(Exception):
    pass


def _norm(h: str) -> str:
    h = h.lower()
    return h if h.startswith("0x") else "0x" + h


def summary(i: int, s: Source) -> dict:
    models = provenance.index_events(s.events, **s.proofs)
    students = [m for m, r in models.items() if r.kind == "student"]
    txs = {e["tx"] for e in s.events}
    return {
        "id": i,
        "label": s.label,
        "chain_id": s.info.get("chain_id"),
        "contract": s.info.get("contract"),
        "backend": s.info.get("backend") or ("rpc" if s.info.get("rpc_url") else None),
        "rpc_url": s.info.get("rpc_url"),
        "run_dirs": [str(r) for r in s.roots],
        "events": len(s.events),
        "proofs_error": s.proofs_error,
        "transactions": len(txs),
        "blocks": len({e["block"] for e in s.events}),
        "models": len(models),
        "students": students,
        "roles": {"0x" + h.hex(): name for name, h in ROLES.items()} | {"0x" + "00" * 32: "DEFAULT_ADMIN"},
    }


def run_config(s: Source, run_id: str, config_hash: str | None) -> dict | None:
    """The run directory's config.json for a record's run, parsed, and whether its SHA-256 is the on-chain
    configHash; None when no run directory of the source holds that run."""
    root = provenance.run_root(run_id, s.roots)
    if root is None:
        return None
    path = root / "config.json"
    try:
        raw = path.read_bytes()
        document = bounded_json(raw, "config.json")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {"run_dir": str(root), "path": str(path), "readable": False}
    digest = "0x" + hashlib.sha256(raw).hexdigest()
    return {
        "run_dir": str(root),
        "path": str(path),
        "readable": True,
        "sha256": digest,
        "matches_chain": config_hash is not None and digest == _norm(config_hash),
        "document": document,
    }


def student_view(s: Source, reg: provenance.Registration) -> dict:
    record = {k: v for k, v in vars(reg).items()}
    return {
        **record,
        "graph": provenance.lineage_graph(s.events, reg.model_hash, **s.proofs),
        "config": run_config(s, reg.run_id, reg.config_hash),
    }


def model_view(s: Source, model_hash: str) -> dict | None:
    proofs = s.proofs  # checked once; a refused proofs file leaves the roots unexpanded, files still found
    tree = provenance.lineage(s.events, model_hash, s.roots, proofs["domain"], merkle=s.proofs_error is None)
    if tree is None:
        return None
    models = provenance.index_events(s.events, **s.proofs)
    users = provenance.used_by(s.events, model_hash, **s.proofs)
    record = {k: v for k, v in vars(models[tree["model_hash"]]).items()}
    return {
        **record,
        "file": tree.get("file"),
        "used_by": [{"model_hash": u, "kind": models[u].kind, "method": models[u].method} for u in users],
        "students": [u for u in users if models[u].kind == "student"],
    }


def verify(sources: list[Source], digest: str) -> dict:
    """Whether (and where) a SHA-256 is registered, in each source."""
    matches = []
    for i, s in enumerate(sources):
        reg = provenance.find(s.events, digest, **s.proofs)
        if reg is None:
            continue
        users = provenance.used_by(s.events, digest, **s.proofs)
        kinds = {h: r.kind for h, r in provenance.index_events(s.events, **s.proofs).items()}
        matches.append(
            {
                "source": i,
                "label": s.label,
                "chain_id": s.info.get("chain_id"),
                "contract": s.info.get("contract"),
                "model_hash": reg.model_hash,
                "kind": reg.kind,
                "by": reg.owner,
                "block": reg.block,
                "tx": reg.tx,
                "run_id": reg.run_id,
                "method": reg.method,
                "students": [u for u in users if kinds.get(u) == "student"],
            }
        )
    return {"sha256": digest, "registered": bool(matches), "matches": matches}


def transactions(s: Source) -> list[dict]:
    """The source's transactions that carry records: block, hash, the events in it, and what the run directory's
    chain.json says of it (what it did, its gas) where there is one."""
    out: dict[str, dict] = {}
    for e in s.events:
        t = out.setdefault(e["tx"], {"tx": e["tx"], "block": e["block"], "events": 0, "what": [], "gas": None})
        t["events"] += 1
    for root in s.roots:  # what the run directory's chain.json says each transaction did, and its gas
        for rec in _chain_transactions(root):
            found = out.get(rec["tx"].lower()) or out.get(rec["tx"])
            if found is None:
                continue
            if isinstance(rec.get("what"), str) and rec["what"] not in found["what"]:
                found["what"].append(rec["what"])
            if isinstance(rec.get("gas"), int):
                found["gas"] = rec["gas"]
    return list(out.values())


def _chain_transactions(root: Path) -> list[dict]:
    try:
        info = bounded_json((Path(root) / "chain.json").read_bytes(), "chain.json")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return []
    txs = info.get("transactions", []) if isinstance(info, dict) else []
    return [t for t in txs if isinstance(t, dict) and isinstance(t.get("tx"), str)]


def create_app(load: Callable[[], list[Source]]) -> Starlette:
    """The app over the sources `load` returns (called once now, and again on POST /api/reload)."""
    ex = Explorer(load)

    def api(fn):
        async def endpoint(request: Request) -> Response:
            try:
                body = await run_in_threadpool(fn, request)  # reading a live chain must not stall the page
            except _NotFound as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            except reported_errors() as exc:  # a chain gone since the start: said, not a 500
                return JSONResponse({"error": str(exc)}, status_code=503)
            return JSONResponse(body, headers={"Cache-Control": "no-store"})

        return endpoint

    def hash_param(request: Request) -> str:
        h = request.path_params["model_hash"]
        if not _HASH.match(h):
            raise _NotFound(f"{h}: not a SHA-256 (64 hex digits)")
        return _norm(h)

    def sources(request: Request):
        return [summary(i, s) for i, s in enumerate(ex.sources)]

    def students(request: Request):
        s = ex.source(request)
        models = provenance.index_events(s.events, **s.proofs)
        return [student_view(s, r) for r in models.values() if r.kind == "student"]

    def accuracies(request: Request):
        s = ex.source(request)
        return provenance.accuracy_tables(s.events, **s.proofs)

    def events(request: Request):
        return ex.source(request).events

    def txs(request: Request):
        return transactions(ex.source(request))

    def model(request: Request):
        view = model_view(ex.source(request), hash_param(request))
        if view is None:
            raise _NotFound("not registered")
        return view

    def verify_hash(request: Request):
        return verify(ex.sources, hash_param(request))

    def reload(request: Request):
        ex.reload()
        return {"reloaded": len(ex.sources)}

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    routes = [
        Route("/", index),
        Route("/api/sources", api(sources)),
        Route("/api/students", api(students)),
        Route("/api/accuracies", api(accuracies)),
        Route("/api/events", api(events)),
        Route("/api/transactions", api(txs)),
        Route("/api/models/{model_hash}", api(model)),
        Route("/api/verify/{model_hash}", api(verify_hash)),
        Route("/api/reload", api(reload), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    # only this machine's names: a page elsewhere that rebinds its own name to 127.0.0.1 is refused
    hosts = ["127.0.0.1", "localhost"]
    return Starlette(
        routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts), Middleware(_Headers)]
    )


class _Headers:
    """SECURITY_HEADERS on every response, the static files' too."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
