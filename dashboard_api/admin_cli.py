"""`strata admin`: the administrator's writes, through the dashboard API (the same calls as its REST routes).

    strata admin create NAME [--rounds N] [--task T] [--model-name M]
    strata admin token issue NAME LABEL        # prints the new token once
    strata admin token list NAME
    strata admin token revoke NAME TOKEN_ID
    strata admin pause|resume|stop NAME

The API address and the admin key come from --api / STRATA_ADMIN_API (default http://127.0.0.1:8080) and
--admin-key / STRATA_ADMIN_KEY.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "admin",
        help="create federations, issue and revoke worker tokens, pause, resume, stop",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--api", default=os.environ.get("STRATA_ADMIN_API", "http://127.0.0.1:8080"), help="dashboard URL"
    )
    p.add_argument("--admin-key", default=None, help="the dashboard's admin key (env STRATA_ADMIN_KEY)")
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    c = verbs.add_parser("create", help="create a federation")
    c.add_argument("name")
    c.add_argument("--rounds", type=int, default=5)
    c.add_argument(
        "--task",
        default="sequence-classification",
        choices=["sequence-classification", "causal-lm", "instruction"],
    )
    c.add_argument("--model-name", default="")
    t = verbs.add_parser("token", help="worker tokens").add_subparsers(dest="token_verb", required=True)
    issue = t.add_parser("issue", help="issue a token (printed once)")
    issue.add_argument("name")
    issue.add_argument("label")
    t.add_parser("list", help="list a federation's tokens").add_argument("name")
    revoke = t.add_parser("revoke", help="revoke a token")
    revoke.add_argument("name")
    revoke.add_argument("token_id", type=int)
    for verb in ("pause", "resume", "stop"):
        verbs.add_parser(verb, help=f"{verb} a federation").add_argument("name")
    p.set_defaults(func=main)


def request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    if args.verb == "create":
        body = {
            "name": args.name,
            "total_rounds": args.rounds,
            "task_kind": args.task,
            "model_name": args.model_name,
        }
        return "POST", "/api/v1/federations", body
    if args.verb == "token":
        base = f"/api/v1/federations/{args.name}/tokens"
        if args.token_verb == "issue":
            return "POST", base, {"label": args.label}
        if args.token_verb == "list":
            return "GET", base, None
        return "DELETE", f"{base}/{args.token_id}", None
    return "POST", f"/api/v1/federations/{args.name}/{args.verb}", None


def main(args: argparse.Namespace) -> int:
    key = args.admin_key or os.environ.get("STRATA_ADMIN_KEY")
    if not key:
        print("strata admin: give the admin key (--admin-key or STRATA_ADMIN_KEY)", file=sys.stderr)
        return 2
    method, path, body = request(args)
    try:
        r = httpx.request(
            method,
            args.api.rstrip("/") + path,
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        print(f"strata admin: cannot reach {args.api}: {exc}", file=sys.stderr)
        return 1
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        print(f"strata admin: {r.status_code}: {detail}", file=sys.stderr)
        return 1
    data = r.json()
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.verb == "token" and args.token_verb == "issue":
        print(f"token {data['id']} for {data['label']} (shown once, keep it secret):\n{data['token']}")
    elif args.verb == "token" and args.token_verb == "list":
        for t in data:
            state = f"revoked {t['revoked_at']}" if t["revoked_at"] else "valid"
            print(f"{t['id']:>4}  {t['label']:<24} {t['prefix']}…  {state}")
    elif args.verb == "token":
        print(f"token {data['id']} ({data['label']}) revoked at {data['revoked_at']}")
    elif args.verb == "create":
        print(f"federation {data['name']} created ({data['total_rounds']} rounds, {data['task_kind']})")
    else:
        print(f"federation {data['name']}: {data['desired_state']} requested (state now {data['state']})")
    return 0
