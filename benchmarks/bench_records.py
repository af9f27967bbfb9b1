"""Records on a mixed-type DataFrame model vs the all-numeric path, side by side in one run.

    python benchmarks/bench_records.py [--seconds 5] [--trees 100]

Two bundles, both built by nbdeploy and served by stock `bentoml serve` on loopback:

  mixed    a 10-column DataFrame (5 numeric with missing values, 4 string categories with
           missing values, 1 short text) -> ColumnTransformer (SimpleImputer, StandardScaler,
           OneHotEncoder, TfidfVectorizer) -> RandomForest; POST one JSON record per request,
           with strings and nulls
  numeric  10 float columns -> the same RandomForest settings; POST one record of numbers
           (and, for reference, one list-of-numbers row)

Single-row requests with `wrk` (Debian package `wrk`) at 1 and 16 connections, each for
--seconds.  Prints req/s, p50/p99 and the ratio mixed/numeric (target: >= 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(tempfile.mkdtemp(prefix="nbdeploy-bench-records-"))
os.environ.setdefault("BENTOML_HOME", str(HERE / "bentoml"))
os.environ.setdefault("NBDEPLOY_HOME", str(HERE / "nbdeploy"))
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serving import wrk  # noqa: E402

NOTES = ["great service", "slow support, bad experience", "ok", "love the app", "billing wrong",
         "fast and friendly", "would not recommend", "fine overall"]


def mixed_frame(n: int, seed: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    df = pd.DataFrame({f"x{i}": rng.normal(i, 1 + i, n).round(2) for i in range(5)})
    for _i, (name, values) in enumerate([("city", ["Oslo", "Bergen", "Paris", "Lyon", "Lima"]),
                                        ("plan", ["basic", "plus", "pro"]),
                                        ("channel", ["web", "app", "phone", "shop"]),
                                        ("region", ["north", "south", "east", "west"])]):
        df[name] = rng.choice(values, n)
    df["note"] = rng.choice(NOTES, n)
    df.loc[rng.random(n) < 0.1, "x0"] = np.nan
    df.loc[rng.random(n) < 0.1, "x3"] = np.nan
    df.loc[rng.random(n) < 0.05, "city"] = np.nan
    df.loc[rng.random(n) < 0.05, "channel"] = np.nan
    y = ((df["x1"].fillna(0) > 1) ^ (df["plan"] == "pro") ^ df["note"].str.contains("slow")).astype(int)
    return df, y.to_numpy()


def build(trees: int):
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    import nbdeploy

    df, y = mixed_frame(2000, 0)
    pre = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), [f"x{i}" for i in range(5)]),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"),
                              OneHotEncoder(handle_unknown="ignore")), ["city", "plan", "channel", "region"]),
        ("text", TfidfVectorizer(), "note"),
    ])
    forest = dict(n_estimators=trees, max_depth=8, random_state=0)
    mixed = Pipeline([("pre", pre), ("clf", RandomForestClassifier(**forest))]).fit(df, y)
    rng = np.random.default_rng(1)
    Xn = rng.normal(size=(2000, 10)).astype(np.float32)
    yn = (Xn[:, 0] + Xn[:, 1] > 0).astype(int)
    import pandas as pd

    Xn = pd.DataFrame(Xn, columns=[f"f{i}" for i in range(10)])
    numeric = RandomForestClassifier(**forest).fit(Xn, yn)
    opts = dict(explain="none", quantize="none", benchmark_budget_s=3)
    dm = nbdeploy.deploy(mixed, df.iloc[:300], name="bench-mixed", **opts)
    dn = nbdeploy.deploy(numeric, Xn.iloc[:300], name="bench-numeric", **opts)
    rec = {k: (None if isinstance(v, float) and v != v else v) for k, v in df.iloc[0].to_dict().items()}
    rec["x0"] = None                                     # at least one null per request
    num_rec = {k: float(v) for k, v in Xn.iloc[0].to_dict().items()}
    return dm, dn, rec, num_rec, list(num_rec.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--trees", type=int, default=100)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is needed: apt-get install wrk")
        return 2
    from nbdeploy import serve

    dm, dn, rec, num_rec, num_row = build(args.trees)
    print(f"mixed bundle:   {dm.tag} ({len(dm.converted.columns)} columns: "
          + ", ".join(f"{c['name']}={c['kind']}" for c in dm.converted.columns) + ")")
    print(f"numeric bundle: {dn.tag}")
    servers = []
    try:
        sm = serve.start(dm.tag)
        servers.append(sm)
        sn = serve.start(dn.tag)
        servers.append(sn)
        cases = [("mixed records", sm.url, {"inputs": [rec]}),
                 ("numeric records", sn.url, {"inputs": [num_rec]}),
                 ("numeric rows", sn.url, {"inputs": [num_row]})]
        results: dict[tuple[str, int], dict] = {}
        for name, url, body in cases:
            f = HERE / f"{name.replace(' ', '-')}.json"
            f.write_text(json.dumps(body))
            wrk(url + "/predict", f, 4, 1)                    # warm-up
        for conns in (1, 16):                                  # interleaved: same machine state
            for name, url, _body in cases:
                f = HERE / f"{name.replace(' ', '-')}.json"
                results[(name, conns)] = wrk(url + "/predict", f, conns, args.seconds)
        print(f"\n{'case':<18} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
        for (name, conns), r in results.items():
            print(f"{name:<18} {conns:>5} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                  f"{r['errors']:>6}")
        print()
        ok = True
        for conns in (1, 16):
            ratio = results[("mixed records", conns)]["rps"] / results[("numeric records", conns)]["rps"]
            ok &= ratio >= 0.5
            print(f"mixed/numeric records at {conns:>2} connection(s): {ratio:.2f} (target >= 0.5)")
        return 0 if ok else 1
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(HERE, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
