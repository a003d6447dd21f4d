"""Handler results become plain JSON data before they leave a host (Ray pickles them, the API
serializes them): nested models, tuples, non-string keys and dict subclasses are converted, and a
`PlainJson` result is passed through untouched."""

from __future__ import annotations

import json
from collections import OrderedDict, defaultdict

from pydantic import BaseModel

from foundry.runtime.role import PlainJson, to_jsonable


class _Repo(BaseModel):
    name: str
    stars: int


def test_nested_models_tuples_and_odd_keys_become_plain_json() -> None:
    counts: defaultdict[str, int] = defaultdict(int, {"open": 2})
    value = {
        "repos": [_Repo(name="rocket", stars=3), (1, 2.5, None, True)],
        7: OrderedDict(a=[{"b": _Repo(name="x", stars=0)}]),
        "counts": counts,
        "text": "é\u0000",
    }
    out = to_jsonable(value)
    assert out == {
        "repos": [{"name": "rocket", "stars": 3}, [1, 2.5, None, True]],
        "7": {"a": [{"b": {"name": "x", "stars": 0}}]},
        "counts": {"open": 2},
        "text": "é\u0000",
    }
    # Plain built-in types all the way down: what json.dumps and a pickle across processes expect.
    assert json.loads(json.dumps(out)) == out
    assert type(out["7"]) is dict
    assert type(out["counts"]) is dict
    assert type(out["repos"][1]) is list


def test_a_plain_json_result_is_returned_as_it_is() -> None:
    page = {"seq": 3, "events": [{"seq": 3, "event": "agentUpdate", "data": {"k": [1, 2]}}]}
    assert to_jsonable(PlainJson(page)) is page
    # Inside another result it is unwrapped too.
    assert to_jsonable({"page": PlainJson(page)}) == {"page": page}
