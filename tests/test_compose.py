"""docker-compose.yml is valid against the Compose specification and wired to our settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from rag_service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema ships the Compose specification's own JSON schema (vendor.compose-spec)."""
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    return subprocess.run([*command, str(path)], capture_output=True, text=True, check=False)


def test_compose_file_matches_the_compose_spec() -> None:
    out = check_compose(COMPOSE)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  api:\n    imagee: rag-service\n")
    out = check_compose(broken)
    assert out.returncode == 1 and "imagee" in out.stdout


def test_services_and_settings_wiring() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert set(doc["services"]) == {"api", "worker", "redis", "postgres", "s3"}
    known = {f"RAGD_{name.upper()}" for name in Settings.model_fields}
    for name in ("api", "worker"):
        env = doc["services"][name]["environment"]
        assert set(env) <= known, set(env) - known
        assert env["RAGD_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["RAGD_REDIS_URL"].startswith("redis://redis:")
    assert doc["services"]["api"]["command"][:2] == ["ragd", "serve"]


def test_api_and_worker_scale_out_without_a_shared_disk() -> None:
    """Two replicas each, no volume (a tmpfs data dir of their own), and every piece of
    durable state in PostgreSQL, Redis or the bucket."""
    doc = yaml.safe_load(COMPOSE.read_text())
    for name in ("api", "worker"):
        service = doc["services"][name]
        assert service["deploy"]["replicas"] == 2
        assert "volumes" not in service and service["tmpfs"] == ["/data"]
        env = service["environment"]
        assert env["RAGD_BACKEND"] == "cloudflare" and env["RAGD_KEYWORD_INDEX"] == "postgres"
        assert env["RAGD_UPLOADS_BUCKET"].startswith("s3://")
        Settings(**{k[5:].lower(): v for k, v in env.items() if "${" not in v})  # valid values
    assert set(doc["volumes"]) == {"postgres-data"}
    assert doc["services"]["api"]["ports"] == ["8787-8788:8787"]


def test_what_stays_on_a_host() -> None:
    """`ragd serve` and `ragd worker` name what a configuration keeps in the data dir."""
    single = Settings()
    assert len(single.host_bound_state()) == 4
    shared = Settings(
        database_url="postgresql+asyncpg://u@h/db",
        backend="cloudflare",
        keyword_index="postgres",
        uploads_bucket="s3://b/p",
    )
    assert shared.host_bound_state() == []
