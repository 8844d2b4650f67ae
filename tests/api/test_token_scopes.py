"""Token policies are enforced: a read token searches but cannot change anything, an edit token
uses the AI Search API but not tokens, an unknown policy is refused (never silently admin),
and only admin tokens manage tokens (a token may still revoke itself)."""

from __future__ import annotations

import httpx

from tests.api.test_legacy import AUTH, assert_error, client, database_url  # noqa: F401

TOKENS = "/accounts/acc/tokens"
INSTANCES = "/accounts/acc/ai-search/instances"


def policy(name: str) -> list[dict[str, object]]:
    return [{"effect": "allow", "permission_groups": [{"name": name}], "resources": {}}]


async def token(http: httpx.AsyncClient, name: str, policies: object = None) -> dict[str, str]:
    body = {"name": name, **({"policies": policies} if policies is not None else {})}
    resp = await http.post(TOKENS, json=body, headers=AUTH)
    assert resp.status_code == 200, resp.text
    created = resp.json()["result"]
    return {"Authorization": f"Bearer {created['value']}", "id": created["id"]}


async def test_scopes(client: httpx.AsyncClient) -> None:  # noqa: F811
    read = await token(client, "reader", policy("AI Search Read"))
    edit = await token(client, "editor")  # no policy: edit
    admin = await token(client, "admin", policy("API Tokens Write"))

    def auth(t: dict[str, str]) -> dict[str, str]:
        return {"Authorization": t["Authorization"]}

    assert (await client.post("/search", json={"query": "bread"}, headers=auth(read))).is_success
    assert (await client.get(INSTANCES, headers=auth(read))).is_success
    made = await client.post(INSTANCES, json={"id": "x"}, headers=auth(read))
    assert_error(made, 403, "needs edit")
    assert (await client.post(INSTANCES, json={"id": "x"}, headers=auth(edit))).is_success
    assert_error(await client.get(TOKENS, headers=auth(edit)), 403, "needs admin")
    other = await client.delete(f"{TOKENS}/{read['id']}", headers=auth(edit))
    assert_error(other, 403, "needs admin")  # any token could delete others before
    assert (await client.get(TOKENS, headers=auth(admin))).is_success
    listed = (await client.get(TOKENS, headers=AUTH)).json()["result"]
    groups = {t["name"]: t["policies"][0]["permission_groups"][0]["name"] for t in listed}
    assert groups == {"reader": "AI Search Read", "editor": "AI Search Edit",
                      "admin": "API Tokens Write"}  # fmt: skip
    mine = await client.delete(f"{TOKENS}/{edit['id']}", headers=auth(edit))
    assert mine.is_success  # revoking itself is fine
    assert_error(await client.get(INSTANCES, headers=auth(edit)), 401, "invalid")


async def test_unknown_policies_are_refused(client: httpx.AsyncClient) -> None:  # noqa: F811
    for policies, fragment in [
        (policy("Zone DNS Edit"), "unknown permission group"),
        ([{"effect": "deny", "permission_groups": [{"name": "AI Search Read"}]}], "only 'allow'"),
        ([{"effect": "allow"}], "permission_groups"),
    ]:
        resp = await client.post(TOKENS, json={"name": "x", "policies": policies}, headers=AUTH)
        assert_error(resp, 400, fragment)
    assert (await client.get(TOKENS, headers=AUTH)).json()["result"] == []
