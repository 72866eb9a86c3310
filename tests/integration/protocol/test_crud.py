"""The CRUD framework through a test-only CRUDService (`sample.thing`): events, errors, update merge,
secrets for readers (reference §1.5, §1.7, §1.11)."""
from __future__ import annotations

from tests.integration.protocol.conftest import Raw, Sampled

READER = ("reader", "reader-pw")


async def admin_and_reader(raw, sampled: Sampled) -> tuple[Raw, Raw]:
    await sampled.server.add_user(*READER, ["READONLY_ADMIN"])
    admin = await (await raw()).setup(subscribe=False)
    reader = await (await raw()).setup(username=READER[0], password=READER[1], subscribe=False)
    return admin, reader


async def test_create_update_delete_emit_query_events_with_full_entries(raw, sampled: Sampled) -> None:
    writer = await (await raw()).setup(subscribe=False)
    watcher = await (await raw()).setup(subscribe=False)
    await watcher.result("core.subscribe", "sample.thing.query")

    created = await writer.result("sample.thing.create", {"name": "one", "count": 2})
    assert created == {"id": created["id"], "name": "one", "count": 2, "secret": None, "doubled": 4}
    updated = await writer.result("sample.thing.update", created["id"], {"count": 5})
    assert updated == {**created, "count": 5, "doubled": 10}
    assert await writer.result("sample.thing.delete", created["id"]) is True

    await watcher.until(lambda m: m.get("params", {}).get("msg") == "removed")
    assert watcher.events("sample.thing.query") == [
        {"msg": "added", "collection": "sample.thing.query", "id": created["id"], "fields": created},
        {"msg": "changed", "collection": "sample.thing.query", "id": created["id"], "fields": updated},
        {"msg": "removed", "collection": "sample.thing.query", "id": created["id"]},
    ]
    assert await writer.result("sample.thing.query") == []


async def test_query_and_get_instance(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(subscribe=False)
    a = await peer.result("sample.thing.create", {"name": "a", "count": 1})
    b = await peer.result("sample.thing.create", {"name": "b", "count": 3})
    assert await peer.result("sample.thing.query") == [a, b]
    # Filters apply after extend: the computed field can be filtered on.
    assert await peer.result("sample.thing.query", [["doubled", ">", 2]]) == [b]
    assert await peer.result("sample.thing.query", [], {"order_by": ["-count"], "select": ["name"]}) == [
        {"name": "b"}, {"name": "a"}]
    assert await peer.result("sample.thing.query", [["name", "=", "a"]], {"get": True}) == a
    assert await peer.result("sample.thing.get_instance", b["id"]) == b


async def test_get_instance_of_a_missing_id(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(subscribe=False)
    error = (await peer.call("sample.thing.get_instance", 7))["error"]
    assert error["code"] == -32602
    assert error["data"]["extra"] == [[None, "SampleThing 7 does not exist", 2]]
    assert error["data"]["reason"] == "[ENOENT] ALL: SampleThing 7 does not exist"
    for method, params in (("sample.thing.update", [7, {"count": 1}]), ("sample.thing.delete", [7])):
        assert (await peer.call(method, *params))["error"]["data"]["extra"] == [
            [None, "SampleThing 7 does not exist", 2]]


async def test_query_get_without_match_is_a_call_error(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(subscribe=False)
    error = (await peer.call("sample.thing.query", [["name", "=", "nothing"]], {"get": True}))["error"]
    assert error["code"] == -32001
    assert error["data"]["error"] == 22
    assert error["data"]["errname"] == "EINVAL"


async def test_create_validation_uses_the_argument_name(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(subscribe=False)
    error = (await peer.call("sample.thing.create", {"name": "", "count": -1, "colour": "red"}))["error"]
    assert error["code"] == -32602
    attributes = {t[0]: t[1] for t in error["data"]["extra"]}
    assert set(attributes) == {"sample_thing_create.name", "sample_thing_create.count",
                               "sample_thing_create.colour"}
    assert attributes["sample_thing_create.count"] == "Input should be greater than or equal to 0"
    assert attributes["sample_thing_create.colour"] == "Extra inputs are not permitted"
    business = (await peer.call("sample.thing.create", {"name": "forbidden"}))["error"]
    assert business["data"]["extra"] == [["sample_thing_create.name", "This name is reserved", 22]]
    assert await peer.result("sample.thing.query") == []


async def test_update_validates_the_merged_object(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(subscribe=False)
    thing = await peer.result("sample.thing.create", {"name": "merge"})
    wrong_type = (await peer.call("sample.thing.update", thing["id"], {"count": "7"}))["error"]
    assert wrong_type["data"]["extra"] == [["sample_thing_update.count", "Input should be a valid integer", 22]]
    unknown = (await peer.call("sample.thing.update", thing["id"], {"doubled": 3}))["error"]
    assert unknown["data"]["extra"][0][0] == "sample_thing_update.doubled"
    business = (await peer.call("sample.thing.update", thing["id"], {"name": "forbidden"}))["error"]
    assert business["data"]["extra"] == [["sample_thing_update.name", "This name is reserved", 22]]

    # A stored value that is no longer valid fails an update that does not touch it.
    stored = await sampled.things.stored_one(thing["id"])
    assert stored is not None
    await sampled.things.save(thing["id"], {**stored, "count": -5})
    untouched = (await peer.call("sample.thing.update", thing["id"], {"name": "renamed"}))["error"]
    assert untouched["data"]["extra"] == [
        ["sample_thing_update.count", "Input should be greater than or equal to 0", 22]]
    assert (await peer.result("sample.thing.get_instance", thing["id"]))["name"] == "merge"


async def test_a_failed_create_leaves_no_row_and_no_event(raw, sampled: Sampled) -> None:
    peer = await (await raw()).setup(subscribe=False)
    await peer.result("core.subscribe", "sample.thing.query")
    answer = await peer.call("sample.thing.create", {"name": "explode"})
    assert answer["error"]["data"]["reason"] == "[EFAULT] after_create failed on purpose"
    assert await peer.result("sample.thing.query") == []
    assert await sampled.server.app.store.all(sampled.things.table) == []
    assert peer.events("sample.thing.query") == []
    # The next create gets a working row.
    assert (await peer.result("sample.thing.create", {"name": "fine"}))["name"] == "fine"


async def test_roles_guard_crud_methods(raw, sampled: Sampled) -> None:
    admin, reader = await admin_and_reader(raw, sampled)
    await admin.result("sample.thing.create", {"name": "x"})
    assert len(await reader.result("sample.thing.query")) == 1
    for method, params in (("sample.thing.create", [{"name": "y"}]), ("sample.thing.delete", [1])):
        error = (await reader.call(method, *params))["error"]
        assert error["code"] == -32001
        assert error["data"]["error"] == 13
        assert error["data"]["reason"] == "[EACCES] Not authorized"


async def test_secret_fields_are_hidden_from_readers_in_results_and_events(raw, sampled: Sampled) -> None:
    admin, reader = await admin_and_reader(raw, sampled)
    await admin.result("core.subscribe", "sample.thing.query")
    await reader.result("core.subscribe", "sample.thing.query")

    created = await admin.result("sample.thing.create", {"name": "s", "secret": "open-sesame"})
    assert created["secret"] == "open-sesame"
    await admin.result("sample.thing.update", created["id"], {"secret": "new-sesame"})
    await reader.until(lambda m: m.get("params", {}).get("msg") == "changed")
    await admin.until(lambda m: m.get("params", {}).get("msg") == "changed")

    assert [e["fields"]["secret"] for e in reader.events("sample.thing.query")] == ["********", "********"]
    assert [e["fields"]["secret"] for e in admin.events("sample.thing.query")] == ["open-sesame", "new-sesame"]
    [seen] = await reader.result("sample.thing.query")
    assert seen["secret"] == "********" and seen["name"] == "s"
    assert (await reader.result("sample.thing.get_instance", created["id"]))["secret"] == "********"
    assert (await admin.result("sample.thing.get_instance", created["id"]))["secret"] == "new-sesame"
    # An unset secret stays null for everyone.
    plain = await admin.result("sample.thing.create", {"name": "no-secret"})
    assert (await reader.result("sample.thing.get_instance", plain["id"]))["secret"] is None
