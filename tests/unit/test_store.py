"""store: listing, lookup, reading and pruning nbdeploy's bundles, checked against BentoML's own
view of its store (``bentoml.bentos.list()`` / ``bentoml.get``) and the files on disk.

Bundles come from ``ref_copy`` (the reference model rebuilt under another name, ~2 s each); one
bento is built with BentoML directly, without nbdeploy's label, to show it is left alone."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from nbdeploy import store
from nbdeploy.errors import InvalidInputError, NotFoundError

NAME_A, NAME_B, FOREIGN = "store-a", "store-b", "store-foreign"


@pytest.fixture(scope="module")
def bundles(ref_copy, tmp_path_factory):
    """Three versions of NAME_A, one of NAME_B (oldest first), and a bento nbdeploy did not make."""
    import bentoml

    a = [ref_copy(NAME_A) for _ in range(3)]
    b = ref_copy(NAME_B)
    ctx = tmp_path_factory.mktemp("foreign")
    (ctx / "foreign_svc.py").write_text(
        "import bentoml\n\n\n@bentoml.service\nclass Foreign:\n"
        "    @bentoml.api\n    def hello(self, x: int) -> int:\n        return x\n")
    sys.path.insert(0, str(ctx))
    try:
        foreign = str(bentoml.bentos.build(service="foreign_svc:Foreign", name=FOREIGN,
                                           build_ctx=str(ctx), include=["foreign_svc.py"]).tag)
    finally:
        sys.path.remove(str(ctx))
        sys.modules.pop("foreign_svc", None)
    yield a, b, foreign
    bentoml.bentos.delete(foreign)


def _ours(bento) -> bool:
    return (bento.info.labels or {}).get("created-by") == "nbdeploy"


def _disk_size(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files
               if not os.path.islink(os.path.join(d, f)))


def test_list_is_bentoml_store_restricted_to_nbdeploy_bundles(bundles):
    import bentoml

    a, b, foreign = bundles
    listed = store.list_bundles()
    by_bentoml = {str(x.tag): x for x in bentoml.bentos.list()}
    assert foreign in by_bentoml and foreign not in {s.tag for s in listed}
    assert {s.tag for s in listed} == {t for t, x in by_bentoml.items() if _ours(x)}
    assert set(a) | {b} <= {s.tag for s in listed}
    # newest first, by BentoML's creation time
    created = [by_bentoml[s.tag].info.creation_time for s in listed]
    assert created == sorted(created, reverse=True)
    for s in listed:
        x = by_bentoml[s.tag]
        assert (s.name, s.version, s.path) == (x.tag.name, x.tag.version, str(x.path))
        assert s.size_bytes == _disk_size(x.path) > 0
        assert s.labels == dict(x.info.labels) and s.variant == x.info.labels.get("variant")
        assert s.to_dict()["tag"] == s.tag


def test_list_of_one_name(bundles):
    import bentoml

    a, b, _ = bundles
    assert [s.tag for s in store.list_bundles(NAME_A)] == a[::-1]
    assert [s.tag for s in store.list_bundles(NAME_B)] == [b]
    assert [str(x.tag) for x in bentoml.bentos.list(NAME_B)] == [b]
    assert store.list_bundles("store-never-built") == []
    with pytest.raises(InvalidInputError):
        store.list_bundles("../escape")


def test_get_resolves_like_bentoml_and_refuses_foreign_bentos(bundles):
    import bentoml

    a, b, foreign = bundles
    assert str(store.get(NAME_A).tag) == str(bentoml.get(f"{NAME_A}:latest").tag) == a[-1]
    assert str(store.get(a[0]).tag) == a[0]
    assert store.bundle_dir(b) == Path(bentoml.get(b).path) / "src"
    with pytest.raises(NotFoundError, match="not made by nbdeploy"):
        store.get(foreign)
    with pytest.raises(NotFoundError) as e:
        store.get(f"{NAME_A}:19990101-000000-abcdef")
    assert "nbdeploy list" in e.value.hint
    with pytest.raises(InvalidInputError):
        store.get("bad/name:1")


def test_report_and_plots_come_from_the_bundle_only(bundles):
    import json

    _, b, _ = bundles
    src = store.bundle_dir(b)
    report = store.read_report(b)
    on_disk = json.loads((src / "model" / "metadata.json").read_text())
    assert report["tag"] == on_disk["tag"] == b
    pngs = sorted(p.name for p in (src / "plots").glob("*.png")) if (src / "plots").is_dir() else []
    assert report["plots"] == pngs
    for name in ("../bento.yaml", "../model/metadata.json", "missing.png"):
        with pytest.raises(NotFoundError):
            store.plot_path(b, name)
    for name in report["plots"]:
        assert store.plot_path(b, name) == src / "plots" / name


def test_delete_and_prune_against_the_store(bundles):
    import bentoml

    a, b, _ = bundles
    with pytest.raises(InvalidInputError, match="version"):
        store.delete(NAME_A)
    with pytest.raises(InvalidInputError):
        store.prune(NAME_A, keep=0)
    assert store.prune(NAME_A, keep=1) == a[1::-1]          # the two older ones, newest first
    assert [str(x.tag) for x in bentoml.bentos.list(NAME_A)] == [a[-1]]
    assert store.prune(NAME_A, keep=1) == []
    assert store.delete(b) == b
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.get(b)
    assert store.list_bundles(NAME_B) == []
