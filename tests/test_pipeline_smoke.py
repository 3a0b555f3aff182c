from conftest import CORPUS, make_pipeline, wait_settled


async def test_quick_upload_to_ready(client, tenant, worker, storage_root):
    pipe = await make_pipeline(client, tenant)
    data = (CORPUS / "Landscape_6.jpg").read_bytes()
    r = await client.post(
        f"/api/projects/{tenant.project}/quick_upload",
        params={"upload_profile": pipe["short_id"], "filename": "land.jpg", "alt_text": "a landscape"},
        content=data, headers=tenant.headers(),
    )
    assert r.status_code == 201, r.text
    image = r.json()
    assert (image["width"], image["height"], image["format"]) == (600, 450, "jpg")
    done = await wait_settled(client, tenant, image["id"])
    assert done["status"] == "ready", done
    assert sorted((o["format"], o["width"]) for o in done["output"]) == [
        ("avif", 64), ("avif", 160), ("jpg", 64), ("jpg", 160), ("webp", 64), ("webp", 160)
    ]
    for o in done["output"]:
        assert (storage_root / pipe["storage_dir"] / o["location"]).stat().st_size == o["file_size"] > 0
    again = await client.post(
        f"/api/projects/{tenant.project}/quick_upload", params={"upload_profile": pipe["short_id"]},
        content=data, headers=tenant.headers(),
    )
    assert again.status_code == 200 and again.json()["id"] == image["id"]
