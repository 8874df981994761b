"""A RAG answer's citations against its retrieved sources: whole answers and streamed ones alike."""

from serving.citations import StreamingCheck, check

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
