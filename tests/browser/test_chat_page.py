"""The chat page ("LLM Chat Test", issue 55 §4) in Debian's chromium: opened from the dashboard's link and
by `mlyard endpoints chat ENDPOINT --open` (its printed address), it streams a private chat endpoint's
answers with their tokens and latency, keeps the conversation, and can be pointed at another
OpenAI-compatible base URL with a token by hand."""

from __future__ import annotations

import json

import pytest
from browsing import SHOTS, open_page, see
from playwright.sync_api import expect
from test_user_paths import _ok, mlyard

pytestmark = pytest.mark.browser


def _ask(page, text: str, count: int) -> dict:
    """Send `text` as a person does (Enter) and wait for the `count`th answer to end: its text and figures
    (the page's CSP runs no evaluated script: read through locators)."""
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    meta = page.locator(".turn.assistant .meta[data-ms]").nth(count - 1)
    try:
        meta.wait_for(state="attached", timeout=60_000)
    except Exception:
        page.screenshot(path=str(SHOTS / "chat-page-missing.png"), full_page=True)
        shown = f"{page.locator('main').inner_text()!r} {page.locator('#status').inner_text()!r}"
        raise AssertionError(f"no answer to {text!r} (screenshot chat-page-missing.png): {shown}") from None
    figures = {k: meta.get_attribute(f"data-{k}") for k in ("prompt-tokens", "completion-tokens", "ttft-ms", "ms")}
    return {"text": page.locator(".turn.assistant .text").nth(count - 1).text_content(),
            "promptTokens": figures["prompt-tokens"], "completionTokens": figures["completion-tokens"],
            "ttftMs": figures["ttft-ms"], "ms": figures["ms"]}


def test_the_chat_page_streams_answers_with_tokens_and_latency_and_keeps_the_conversation(
        stack, browser, platform, tmp_path, tiny_chat_model):
    import mlyard.endpoints as api

    folder = tiny_chat_model(tmp_path / "pagechat")
    platform.models.create_from_directory("pagechat", folder, "file://pagechat", parameters={"task": "chat"},
                                          framework="transformers")
    api.create({"name": "talk", "stage": {"resources": [{"model": "pagechat/1"}]}})
    try:
        token = json.loads(_ok(mlyard("endpoints", "tokens", "issue", "talk", "--json")))["token"]
        # the dashboard lists the chat endpoint with its chat page's link
        board = open_page(browser, json.loads(_ok(mlyard("status", "--json")))["dashboard"])
        link = board.get_by_role("row").filter(has_text="talk").get_by_role("link", name="LLM chat test")
        href = link.get_attribute("href")
        assert href.split("#")[0].endswith("/_chat") and "token" not in href  # the page asks for the token
        # `mlyard endpoints chat talk --open` prints the address it opens (a headless machine has no browser)
        opened = _ok(mlyard("endpoints", "chat", "talk", "--open", "--token", token)).strip().splitlines()[0]
        page = open_page(browser, opened)
        assert page.input_value("#model") == "pagechat" and page.input_value("#token") == token
        assert "token=" not in page.url  # the fragment left the address bar
        see(page, "pagechat", "chat-page-about")  # the model the page talks to, said beside its name
        expect(page.locator("#temperature")).to_have_value("0")  # the model's own default (its config: greedy)
        page.fill("#max", "6")
        first = _ask(page, "hello there", 1)
        waited = page.locator(".turn.assistant .meta").nth(0).get_attribute("data-queued-ms")
        assert waited is not None and 0 <= int(waited) < 1000  # its wait for a place in the batch
        see(page, "generating", "chat-page-queue")  # the batch's queue, read again after the answer
        assert first["text"] and int(first["completionTokens"]) == 6 and int(first["promptTokens"]) > 0, first
        assert 0 <= int(first["ttftMs"]) <= int(first["ms"])
        see(page, "tokens in, 6 out", "chat-page")
        second = _ask(page, "and again", 2)  # the conversation so far goes with it: more tokens in
        assert int(second["promptTokens"]) > int(first["promptTokens"]) + 2, (first, second)
        page.reload()  # the conversation stays with the tab
        page.wait_for_selector(".turn.user")
        turns = page.locator(".turn")
        assert [turns.nth(i).get_attribute("class") for i in range(turns.count())] == [
            "turn user", "turn assistant", "turn user", "turn assistant"]
        # pointed by hand at another OpenAI-compatible base URL (the stage's own URL) with a wrong token, then
        # the right one
        stage_base = opened.split("#")[0].removesuffix("/_chat") + "/talk/stages/default/pagechat/openai/v1"
        page.fill("#base", stage_base)
        page.fill("#token", "wrong")
        page.click("#apply")
        page.fill("#prompt", "hi")
        page.press("#prompt", "Enter")
        see(page, "401", "chat-page-refused")
        page.fill("#token", token)
        page.click("#apply")
        assert page.locator(".turn").count() == 0  # a new conversation
        assert int(_ask(page, "hi", 1)["completionTokens"]) > 0
        page.screenshot(path=str(SHOTS / "chat-page.png"), full_page=True)
    finally:
        api.delete("talk")
