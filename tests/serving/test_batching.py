"""The batcher alone (real asyncio, a real worker thread): merged calls, each caller its own rows,
a hanging call timing out while the next works, one bad request failing alone."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from mlyard.serving.batching import Batcher, ModelTimeout


def test_concurrent_requests_share_calls_and_get_their_own_rows():
    calls = []

    def model(x):
        calls.append(len(x))
        time.sleep(0.01)
        return x.sum(axis=1)

    async def main():
        b = Batcher(model, max_batch_size=16)
        xs = [np.full((1 + i % 3, 4), float(i)) for i in range(40)]
        outs = await asyncio.gather(*(b.run(x) for x in xs))
        for x, out in zip(xs, outs):
            assert out.tolist() == x.sum(axis=1).tolist()
        return b

    b = asyncio.run(main())
    assert len(calls) < 40 and max(calls) <= 16 and b.batched_rows == sum(1 + i % 3 for i in range(40))


def test_a_hanging_call_times_out_and_the_next_one_works():
    release = threading.Event()

    def model(x):
        if x[0, 0] < 0:
            release.wait(10)
        return x[:, 0]

    async def main():
        b = Batcher(model, timeout_seconds=0.3)
        with pytest.raises(ModelTimeout):
            await b.run(np.array([[-1.0]]))
        return (await b.run(np.array([[2.0]]))).tolist()

    try:
        assert asyncio.run(main()) == [2.0]
    finally:
        release.set()


def test_one_bad_request_fails_alone():
    def model(x):
        if (x < 0).any():
            raise ValueError("negative input")
        return x[:, 0]

    async def main():
        b = Batcher(model)
        return await asyncio.gather(b.run(np.array([[1.0]])), b.run(np.array([[-1.0]])), b.run(np.array([[3.0, 4.0]])),
                                    return_exceptions=True)

    good, bad, other_width = asyncio.run(main())
    assert good.tolist() == [1.0] and isinstance(bad, ValueError) and other_width.tolist() == [3.0]
