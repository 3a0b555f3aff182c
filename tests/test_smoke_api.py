async def test_health(client):
    r = await client.get("/api/health")
    assert r.status_code == 200
    assert r.json() == {"database": True, "healthy": True}


async def test_projects_roundtrip(client, tenant):
    r = await client.get("/api/projects", headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert [p["id"] for p in r.json()] == [tenant.project]
    r = await client.post("/api/projects", json={"name": "Blog"}, headers=tenant.headers())
    assert r.status_code == 201, r.text
