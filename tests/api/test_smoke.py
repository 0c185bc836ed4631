def test_create_then_get(api):
    alice = api.account("alice")
    created = api.client.post("/tasks", json={"title": "t", "due_at": "2030-01-01T00:00:00Z"}, headers=alice.headers)
    assert created.status_code == 201
    got = api.client.get(created.headers["Location"], headers=alice.headers)
    assert got.json["reminder"]["state"] == "waiting"
