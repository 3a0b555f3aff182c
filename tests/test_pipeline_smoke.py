from conftest import CORPUS, TEST_PROFILE_JPEG_OUTPUTS, make_pipeline, wait_settled


async def test_quick_upload_to_ready(client, tenant, worker, storage_root):
    pipe = await make_pipeline(client, tenant)
    data = (CORPUS / "Landscape_6.jpg").read_bytes()
    r = await client.post(
        f"/api/projects/{tenant.project}/quick_upload",
        params={"upload_profile": pipe["short_id"], "filename": "land.jpg", "alt_text": "a landscape"},
        content=data,
        headers=tenant.headers(),
    )
    assert r.status_code == 201, r.text
    image = r.json()
    assert (image["width"], image["height"], image["format"]) == (600, 450, "jpg")
    done = await wait_settled(client, tenant, image["id"])
    assert done["status"] == "ready", done
    assert sorted((o["format"], o["width"]) for o in done["output"]) == TEST_PROFILE_JPEG_OUTPUTS
    for o in done["output"]:
        assert (storage_root / pipe["storage_dir"] / o["location"]).stat().st_size == o["file_size"] > 0
    again = await client.post(
        f"/api/projects/{tenant.project}/quick_upload",
        params={"upload_profile": pipe["short_id"]},
        content=data,
        headers=tenant.headers(),
    )
    assert again.status_code == 200 and again.json()["id"] == image["id"]


async def test_picture_tag(client, tenant, worker):
    pipe = await make_pipeline(client, tenant)
    r = await client.post(
        f"/api/projects/{tenant.project}/quick_upload",
        params={
            "upload_profile": pipe["short_id"],
            "filename": "p.jpg",
            "alt_text": '"><script>alert(1)</script>',
        },
        content=(CORPUS / "Landscape_1.jpg").read_bytes(),
        headers=tenant.headers(),
    )
    image_id = r.json()["id"]
    early = await client.get(f"/api/images/{image_id}/picture", headers=tenant.headers())
    assert early.status_code in (200, 409)
    await wait_settled(client, tenant, image_id)
    r = await client.get(f"/api/images/{image_id}/picture", headers=tenant.headers())
    assert r.status_code == 200, r.text
    html = r.text
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert html.index('type="image/avif"') < html.index('type="image/webp"')
    assert 'width="600" height="450"' in html and 'loading="lazy"' in html
    data = (
        await client.get(
            f"/api/images/{image_id}/picture", params={"format": "json"}, headers=tenant.headers()
        )
    ).json()
    assert [c["width"] for c in data["sources"][0]["candidates"]] == [64, 160]
    assert data["img"]["format"] == "jpg"
