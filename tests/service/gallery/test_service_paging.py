"""GET /gallery paged by cursor (after=<id>, next) on every backend: stable while items are deleted."""

from __future__ import annotations

from typing import Any

from tests.support.images import files_field, player_png


def register(client: Any, collection: str, players: range) -> list[str]:
    response = client.post(
        "/gallery",
        files=files_field(*(player_png(p) for p in players)),
        data={"collection": collection, "labels": [f"player-{p}" for p in players]},
    )
    assert response.status_code == 201, response.text
    return [i["id"] for i in response.json()["items"]]


def test_cursor_paging_neither_skips_nor_repeats_while_items_are_deleted(client: Any) -> None:
    ids = register(client, "m", range(0, 12)) + register(client, "m", range(12, 24))
    register(client, "other", range(30, 33))  # another collection, interleaved in the store, never listed
    ids += register(client, "m", range(24, 30))
    deleted: set[str] = set()
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"collection": "m", "limit": 7}
        if cursor is not None:
            params["after"] = cursor
        page = client.get("/gallery", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [i["id"] for i in body["items"]]
        assert body["after"] == cursor and body["total"] == len(ids) - len(deleted)
        cursor = body["next"]
        if cursor is None:
            break
        assert cursor == body["items"][-1]["id"]
        pages += 1
        # Between pages: the cursor item itself goes, and so do items on both sides of it.
        position = ids.index(cursor)
        for victim in {cursor, ids[position - 3], ids[min(position + 2, len(ids) - 1)]} - deleted:
            assert client.delete(f"/gallery/{victim}").status_code == 200
            deleted.add(victim)
    lived_throughout = [i for i in ids if i not in deleted]
    assert pages >= 3
    assert len(seen) == len(set(seen)), "an item was listed twice"
    assert set(lived_throughout) <= set(seen), "an item that lived throughout was skipped"
    assert seen == [i for i in ids if i in set(seen)], "pages are not in registration order"


def test_offset_paging_still_works_and_reports_the_next_cursor(client: Any) -> None:
    ids = register(client, "m", range(0, 5))
    first = client.get("/gallery", params={"collection": "m", "limit": 2}).json()
    assert [i["id"] for i in first["items"]] == ids[:2] and first["offset"] == 0 and first["next"] == ids[1]
    second = client.get("/gallery", params={"collection": "m", "limit": 2, "offset": 2}).json()
    assert [i["id"] for i in second["items"]] == ids[2:4]
    rest = client.get("/gallery", params={"collection": "m", "limit": 2, "after": second["next"]}).json()
    assert [i["id"] for i in rest["items"]] == ids[4:] and rest["next"] is None
