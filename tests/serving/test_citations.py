"""A RAG answer's citations against its retrieved sources: whole answers and streamed ones alike."""

from mlyard.serving.citations import StreamingCheck, check

SOURCES = [{"index": 1, "file": "handbook.md", "where": ""}, {"index": 2, "file": "talk.pdf", "where": "page 2"}]
ANSWER = ("Rotate tokens monthly [1]. Keys live in the vault [2] (talk.pdf, page 2). Use the console "
          "[8] (talking.pdf, page 9) or the CLI [2] (guide.pdf, page 1).")
CLEAN = ("Rotate tokens monthly [1]. Keys live in the vault [2] (talk.pdf, page 2). Use the console "
         "or the CLI [2].")


def test_citations_that_are_not_the_retrieved_sources_are_removed_and_counted():
    assert check(ANSWER, SOURCES) == (CLEAN, 2)
    assert check("No citations here, [sic] and [a].", SOURCES) == ("No citations here, [sic] and [a].", 0)


def test_a_streamed_answer_is_checked_the_same_in_any_pieces():
    for size in (1, 2, 3, 5, 8, 13, 400):
        stream = StreamingCheck(SOURCES)
        out = "".join(stream.feed(ANSWER[i:i + size]) for i in range(0, len(ANSWER), size)) + stream.end()
        assert (out, stream.removed) == (CLEAN, 2), size
    stream = StreamingCheck(SOURCES)
    assert stream.feed("Plain text goes out at once.") == "Plain text goes out at once."
    assert stream.feed(" Then [") == " Then" and stream.feed("1] more") == " [1] more"


PASSAGES = ["Request logs of every endpoint are kept for 35 days, then deleted.",
            "Tokens are rotated monthly by the platform team; keys live in the vault."]


def test_a_citation_stands_only_where_its_claim_drew_on_the_passage():
    # what the built-in SmolLM2 wrote (issue 52): a bare number, a claim-less sentence, a claim the passage
    # does not hold; each cited a real source and so looked sourced
    assert check("[2]", SOURCES, PASSAGES) == ("", 1)
    assert check("The answer to this question is: [1]", SOURCES, PASSAGES) == ("The answer to this question is:", 1)
    assert check("The office opens at nine on weekdays [1].", SOURCES, PASSAGES) == (
        "The office opens at nine on weekdays.", 1)
    # a claim the passage holds keeps its citation, before or after the stop, one source or two
    grounded = "Logs are kept for 35 days [1]. Keys are in the vault. [2] Tokens rotate monthly [2]."
    assert check(grounded, SOURCES, PASSAGES) == (grounded, 0)
    # the wrong source for a claim goes, alone or beside the right one
    assert check("Logs are kept for 35 days [2].", SOURCES, PASSAGES) == ("Logs are kept for 35 days.", 1)
    assert check("Tokens rotate monthly [2][1].", SOURCES, PASSAGES) == ("Tokens rotate monthly [2].", 1)
    # without the passages only numbers and files are judged (the streaming test's answer)
    assert check("The office opens at nine [1].", SOURCES) == ("The office opens at nine [1].", 0)


def test_a_streamed_answer_judges_a_claim_that_began_in_earlier_pieces():
    text = "Logs are kept for 35 days [1]. The office opens at nine [1]. [2]"
    want = ("Logs are kept for 35 days [1]. The office opens at nine.", 2)
    assert check(text, SOURCES, PASSAGES) == want
    for size in (1, 2, 3, 7, 400):
        stream = StreamingCheck(SOURCES, PASSAGES)
        out = "".join(stream.feed(text[i:i + size]) for i in range(0, len(text), size)) + stream.end()
        assert (out, stream.removed) == want, size
