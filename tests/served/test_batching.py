"""Adaptive batching in the served bundle: concurrent requests share model calls, and each
request still gets exactly its own rows' answers."""

from __future__ import annotations

import asyncio

import numpy as np

from nbdeploy.runtime.batching import Batcher


def test_concurrent_requests_are_batched_and_answers_stay_per_request():
    calls = []

    def model(X):
        calls.append(len(X))
        return {"value": X.sum(axis=1)}

    async def main():
        b = Batcher(model, max_batch_size=8)
        rows = [np.full((1 + i % 3, 4), float(i), dtype=np.float32) for i in range(20)]
        outs = await asyncio.gather(*(b.submit(X) for X in rows))
        return rows, outs, b

    rows, outs, b = asyncio.run(main())
    for X, out in zip(rows, outs):
        np.testing.assert_array_equal(out["value"], X.sum(axis=1))
    assert sum(calls) == sum(len(X) for X in rows)
    assert len(calls) < len(rows), "requests waiting together should share a model call"
    assert max(calls) <= 8 and b.batches == len(calls)


def test_a_failing_batch_fails_only_its_requests():
    state = {"n": 0}

    def model(X):
        state["n"] += 1
        if state["n"] == 1:
            raise RuntimeError("boom")
        return {"value": X[:, 0]}

    async def main():
        b = Batcher(model, max_batch_size=1)
        return await asyncio.gather(b.submit(np.ones((1, 2))), b.submit(np.zeros((1, 2))),
                                    return_exceptions=True)

    first, second = asyncio.run(main())
    assert isinstance(first, RuntimeError)
    assert second["value"].tolist() == [0.0]


def test_served_bundle_batches_concurrent_requests(rf_model, breast_cancer, post, get):
    """Against a real `bentoml serve`: 96 single-row requests from 16 threads at once are all
    answered with their own row's probabilities (scikit-learn's), and the server's own counters
    show they shared model calls: exactly 96 rows went through the batcher in fewer calls."""
    import concurrent.futures as cf

    import nbdeploy

    X = breast_cancer[1]
    d = nbdeploy.deploy(rf_model, X, name="batched", explain="none", quantize="none",
                        serving={"batching": {"max_batch_size": 16, "max_latency_ms": 5}})
    server = d.serve()
    try:
        before = get(server.url + "/metadata")[1]["serving"]["batching"]
        assert before["max_batch_size"] == 16
        n = 96
        idx = [i % len(X) for i in range(n)]
        expected = rf_model.predict_proba(X.iloc[idx])

        def one(k):
            return k, post(server.url + "/predict", {"inputs": [X.values[idx[k]].tolist()]})

        with cf.ThreadPoolExecutor(16) as ex:
            results = list(ex.map(one, range(n)))
        for k, (status, body) in results:
            assert status == 200, body
            np.testing.assert_allclose(body["probabilities"][0], expected[k], atol=1e-5)
        after = get(server.url + "/metadata")[1]["serving"]["batching"]
        rows, calls = after["rows"] - before["rows"], after["batches"] - before["batches"]
        print(f"batching: {rows} rows in {calls} model calls")
        assert rows == n, (before, after)
        assert 0 < calls < n, f"{n} concurrent requests took {calls} model calls: nothing was batched"
        # a multi-row request still goes through as one batch of its own rows
        status, body = post(server.url + "/predict", {"inputs": X.values[:10].tolist()})
        assert status == 200
        np.testing.assert_allclose(body["probabilities"], rf_model.predict_proba(X.iloc[:10]), atol=1e-5)
        last = get(server.url + "/metadata")[1]["serving"]["batching"]
        assert last["rows"] - after["rows"] == 10 and last["batches"] - after["batches"] == 1
    finally:
        server.stop()


def test_unbatched_bundle_reports_no_batcher(ref_server, get):
    """The control: the reference bundle (rows too cheap to batch) has no batcher at all."""
    meta = get(ref_server.url + "/metadata")[1]
    assert meta["serving"]["batching"] is None
