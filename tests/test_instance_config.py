"""The query path's copy of an instance's settings: this process's changes apply at once,
another process's within CONFIG_TTL_S."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_service import instance_changes, instance_registry
from rag_service.config import Settings
from rag_service.errors import InvalidRequest, NotFound
from rag_service.registry import Providers
from rag_service.runtime import Runtime
from tests.fakes import HashingEmbedder


def factories() -> dict[str, object]:
    embedder = HashingEmbedder()
    return {"embedder_factory": lambda model, pooling: embedder}


async def test_changes_made_here_apply_at_once_and_elsewhere_within_the_ttl(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "src").mkdir()
    async with (
        Runtime(settings, Providers(settings, **factories())) as api,
        Runtime(settings) as other,
    ):
        await api.instances.ensure("docs", str(tmp_path / "src"))
        assert (await api.instances.config("docs")).max_num_results == 10

        await instance_changes.update_instance(api, "docs", None, {"max_num_results": 3})
        assert (await api.instances.config("docs")).max_num_results == 3

        # Another process (here: another Runtime on the same database) changes it.
        await instance_changes.update_instance(other, "docs", None, {"max_num_results": 7})
        assert (await api.instances.config("docs")).max_num_results == 3
        monkeypatch.setattr(instance_registry, "CONFIG_TTL_S", 0.0)
        assert (await api.instances.config("docs")).max_num_results == 7


async def test_a_deleted_instance_is_gone_for_the_query_path(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "src").mkdir()
    async with Runtime(settings, Providers(settings, **factories())) as api:
        await api.instances.ensure("docs", str(tmp_path / "src"))
        await api.instances.config("docs")
        await instance_changes.delete_instance(api, "docs")
        with pytest.raises(NotFound):
            await api.instances.config("docs")


@pytest.mark.parametrize(
    ("jurisdiction", "host"), [(None, "acc"), ("default", "acc"), ("eu", "acc.eu")]
)
def test_an_r2_source_in_a_jurisdiction(jurisdiction: str | None, host: str) -> None:
    """AI Search's `source_params.r2_jurisdiction` picks the R2 endpoint of that jurisdiction."""
    from rag_service.instances import validate_config
    from rag_service.models import Instance
    from rag_service.providers.s3_source import S3Source

    settings = Settings(cloudflare_account_id="acc", s3_access_key_id="k", s3_secret_access_key="s")
    params = {} if jurisdiction is None else {"r2_jurisdiction": jurisdiction}
    cfg = validate_config({"type": "r2", "source_params": params})
    source = Providers(settings).source(Instance(id="docs", source="bucket"), cfg)
    assert isinstance(source, S3Source)
    assert source.client.meta.endpoint_url == f"https://{host}.r2.cloudflarestorage.com"
    with pytest.raises(InvalidRequest, match="r2_jurisdiction"):
        validate_config({"type": "r2", "source_params": {"r2_jurisdiction": "EU; x"}})
