"""Reading ``nft -j list ruleset inet``: our three tables, as structure, not text.

Sans-io. Only ``inet`` tables named istio-ambient-* are kept. Each rule's expressions become
`Term` keys (see nftterms); an expression we do not model becomes an opaque key that can never
equal a wanted one, so it shows up as drift instead of being ignored. A document that is not
nft's JSON at all raises RuleParseError.
"""

from __future__ import annotations

import json
from typing import Any

from inmesh.redirect.model import NFT_FAMILY, NFT_TABLES, RuleParseError
from inmesh.redirect.nftables import NftChain, NftRule, NftTable
from inmesh.redirect.nftterms import Term, canonical_match, statement

_VERDICTS = ("accept", "drop", "return", "continue")


def parse_ruleset(text: str) -> dict[str, NftTable]:
    """Our tables found in an ``nft -j list ...`` document, keyed by name."""
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise RuleParseError(f"nft printed invalid JSON: {exc}") from exc
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise RuleParseError("nft JSON has no 'nftables' list")
    found: dict[str, dict[str, list[Any]]] = {}
    for item in items:
        if not isinstance(item, dict) or len(item) != 1:
            raise RuleParseError(f"nft JSON item is not a one-key object: {item!r:.200}")
        ((kind, body),) = item.items()
        _collect(found, kind, body)
    return {name: _table(name, parts) for name, parts in found.items()}


def _collect(found: dict[str, dict[str, list[Any]]], kind: str, body: object) -> None:
    if not isinstance(body, dict) or body.get("family") != NFT_FAMILY:
        return
    table = body.get("name") if kind == "table" else body.get("table")
    if table not in NFT_TABLES:
        return
    parts = found.setdefault(str(table), {"table": [], "chain": [], "rule": [], "extra": []})
    parts[kind if kind in ("table", "chain", "rule") else "extra"].append((kind, body))


def _table(name: str, parts: dict[str, list[Any]]) -> NftTable:
    extras = [f"{kind} {body.get('name', '')}".strip() for kind, body in parts["extra"]]
    extras += [f"table flags {body['flags']}" for _, body in parts["table"] if body.get("flags")]
    chains = tuple(_chain(body) for _, body in parts["chain"])
    rules = tuple(NftRule(str(body.get("chain")), _terms(body.get("expr")))
                  for _, body in parts["rule"])
    return NftTable(name, chains, rules, tuple(extras))


def _chain(body: dict[str, Any]) -> NftChain:
    prio = body.get("prio")
    return NftChain(
        name=str(body.get("name")),
        type=body.get("type"),
        hook=body.get("hook"),
        prio=prio if isinstance(prio, int) else None,
        policy=body.get("policy"),
    )


def _terms(exprs: object) -> tuple[Term, ...]:
    if not isinstance(exprs, list):
        return (_opaque(exprs),)
    return tuple(_term(expr) for expr in exprs)


def _term(expr: object) -> Term:
    if not isinstance(expr, dict) or len(expr) != 1:
        return _opaque(expr)
    ((kind, body),) = expr.items()
    if kind == "match" and isinstance(body, dict):
        return _match(body) or _opaque(expr)
    if kind == "counter":
        return statement("counter")
    if kind in _VERDICTS and body is None:
        return statement(kind)
    if kind in ("jump", "goto") and isinstance(body, dict) and set(body) == {"target"}:
        return statement(f"{kind} {body['target']}")
    if kind == "redirect" and isinstance(body, dict) and set(body) == {"port"}:
        return statement(f"redirect to :{body['port']}")
    if kind == "mangle" and isinstance(body, dict):
        return _mangle(body) or _opaque(expr)
    return _opaque(expr)


def _match(body: dict[str, Any]) -> Term | None:
    left = _subject(body.get("left"))
    op, right = body.get("op"), body.get("right")
    if left is None or op not in ("==", "!=") or isinstance(right, (list, bool)):
        return None
    if isinstance(right, dict):
        prefix = right.get("prefix")
        if not isinstance(prefix, dict) or set(prefix) != {"addr", "len"}:
            return None
        right = f"{prefix['addr']}/{prefix['len']}"
    subject, mask = left
    return statement(canonical_match(subject, op, right, mask))


def _subject(left: object) -> tuple[str, int | None] | None:
    if not isinstance(left, dict) or len(left) != 1:
        return None
    ((kind, body),) = left.items()
    if kind == "&" and isinstance(body, list) and len(body) == 2 and isinstance(body[1], int):
        inner = _subject(body[0])
        return (inner[0], body[1]) if inner is not None and inner[1] is None else None
    if not isinstance(body, dict):
        return None
    if kind == "meta" and set(body) == {"key"}:
        key = body["key"]
        return (key if key in ("iifname", "oifname") else f"meta {key}"), None
    if kind == "payload" and set(body) == {"protocol", "field"}:
        return f"{body['protocol']} {body['field']}", None
    if kind == "ct" and set(body) == {"key"}:
        return f"ct {body['key']}", None
    return None


_CT_MARK, _META_MARK = {"ct": {"key": "mark"}}, {"meta": {"key": "mark"}}


def _mangle(body: dict[str, Any]) -> Term | None:
    """The statements we write: ct zone set N, meta mark set ct mark, ct mark set ..."""
    key, value = body.get("key"), body.get("value")
    if key == {"ct": {"key": "zone"}} and isinstance(value, int) and not isinstance(value, bool):
        return statement(f"ct zone set {value}")
    if key == _META_MARK and value == _CT_MARK:
        return statement("meta mark set ct mark")
    if key == _CT_MARK:
        return _ct_mark_set(value)
    return None


def _ct_mark_set(value: object) -> Term | None:
    """``ct mark & A | B`` arrives as {"|": [{"&": [ct mark, A]}, B]}."""
    parts = value.get("|") if isinstance(value, dict) and len(value) == 1 else None
    if not (isinstance(parts, list) and len(parts) == 2 and isinstance(parts[1], int)):
        return None
    masked, bits = parts
    args = masked.get("&") if isinstance(masked, dict) and len(masked) == 1 else None
    if not (isinstance(args, list) and len(args) == 2 and args[0] == _CT_MARK
            and isinstance(args[1], int)):
        return None
    keep = args[1] | bits  # nft stores (x & a) | b as (x & (a | b)) | b: compare that form
    return statement(f"ct mark set ct mark & {keep:#x} | {bits:#x}")


def _opaque(expr: object) -> Term:
    text = json.dumps(expr, sort_keys=True, default=str)
    return statement(f"<unmodelled {text}>")
