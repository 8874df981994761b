"""`mlyard endpoints tokens ...`: a token-protected endpoint's tokens: issue (shown once), list (with the
tokens used today), revoke, and a budget of tokens a day (mlyard/endpoints.py)."""

from __future__ import annotations

from typing import Optional

import typer

from mlyard.cli.common import JSON, ask, emit, guard, out, typer_app

tokens_app = typer_app("Tokens of a token-protected endpoint: issue (shown once), list, revoke, budget (tokens a day).")


@tokens_app.command("issue")
def tokens_issue(endpoint: str, days: float = typer.Option(30.0, "--days", help="Valid for this many days."),
                 expires: Optional[str] = typer.Option(None, "--expires", help="Or valid until this ISO-8601 time."),
                 daily_tokens: Optional[int] = typer.Option(None, "--daily-tokens", help="The tokens of generative "
                                                            "answers (prompt and completion) it may use a day (UTC); "
                                                            "past them the gateway answers 429 until midnight UTC."),
                 as_json: bool = JSON) -> None:
    """Issue a token; it is shown only now. Send it as 'Authorization: Bearer <token>'."""
    from mlyard.commands import act

    token = guard(lambda: act("endpoints_issue", name=endpoint, days=days, expires_at=expires,
                              daily_tokens=daily_tokens))
    if as_json:
        emit(token, True)
        return
    print(token["token"])
    out.print(f"(token {token['id']}, valid until {token['expires_at']}; it is not shown again)", style="dim")


@tokens_app.command("list")
def tokens_list(endpoint: str, as_json: bool = JSON) -> None:
    """Tokens with their prefix, expiry, state (valid, expired, revoked), budget and tokens used today (UTC)."""
    emit(guard(lambda: ask("endpoints_tokens", endpoint=endpoint)), as_json,
         ["id", "prefix", "created_at", "expires_at", "state", "daily_tokens", "used_today"],
         empty=f"no tokens: issue one with `mlyard endpoints tokens issue {endpoint}`")


@tokens_app.command("revoke")
def tokens_revoke(endpoint: str, token_id: int) -> None:
    """Revoke a token: the gateway refuses it at once."""
    from mlyard.commands import act

    guard(lambda: act("endpoints_revoke", name=endpoint, token_id=token_id))
    out.print(f"revoked token {token_id} of {endpoint}")


@tokens_app.command("budget")
def tokens_budget(endpoint: str, token_id: str = typer.Argument(..., metavar="TOKEN", help="A token's id, or "
                                                                 "rag:NAME for a RAG whose LLM is this endpoint."),
                  daily_tokens: int = typer.Option(..., "--daily-tokens", help="Tokens a day (prompt and completion "
                                                   "together, UTC days); 0 lifts the budget."),
                  as_json: bool = JSON) -> None:
    """Set a token's (or a RAG's) budget of tokens a day; once spent, the gateway answers 429 until 00:00 UTC."""
    from mlyard.commands import act

    view = guard(lambda: act("endpoints_budget", name=endpoint, token_id=token_id, daily_tokens=daily_tokens or None))
    if as_json:
        emit(view, True)
        return
    out.print(f"token {token_id} of {endpoint}: " + (f"{view['daily_tokens']} tokens a day" if view["daily_tokens"]
                                                     else "no budget"))
