"""Schemathesis against /openapi.json, as admin and as a customer: no 5xx, every answer as documented.

Bounded in time (`--max-time`) and examples, deterministic by seed, loopback only. The
streaming watch is left out (it never ends by itself); it has its own tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconcile.store import Store
from specs.kinds import VPS
from tests.helpers.access_env import Env, served

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "response_headers_conformance")
SECONDS_PER_ROLE = 20


@pytest.fixture
def env(store: Store, tmp_path: Path) -> Iterator[Env]:
    """Two customers with a server each, a token per role; no rate limit (the fuzzer is fast)."""
    with served(store, tmp_path, rate_per_principal=0) as e:
        yield e


def schemathesis() -> str:
    exe = Path(sys.executable).with_name("schemathesis")
    found = str(exe) if exe.exists() else shutil.which("schemathesis")
    assert found, "schemathesis is in the test extras: pip install -e '.[test]'"
    return found


@pytest.mark.timeout(180)
@pytest.mark.parametrize("who", ["admin", "customer"])
def test_fuzzing_finds_no_server_error_and_no_undocumented_answer(env: Env, tmp_path: Path, who: str) -> None:
    """Generated valid and invalid requests get documented 2xx/4xx answers with problem+json errors."""
    cmd = [schemathesis(), "run", f"{env.url}/openapi.json", "--header", f"Authorization: Bearer {env.tokens[who]}",
           "--checks", CHECKS, "--max-time", str(SECONDS_PER_ROLE), "--max-examples", "30", "--seed", "6",
           "--workers", "2", "--exclude-path", "/v1/watch", "--generation-database", "none", "--no-color",
           "--request-timeout", "10", "--suppress-health-check", "all", "--warnings", "off",
           # Not the stateful phase: it checks a call to a concrete path (/v1/tokens, /v1/audit) against
           # the templated /v1/{kind} that also matches it, though OpenAPI has concrete paths win.
           "--phases", "examples,coverage,fuzzing"]
    env_vars = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, cwd=tmp_path, env=env_vars, check=False)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert "Server error" not in proc.stdout, tail
    if who == "customer":
        # The other customer's objects are untouched: the customer's fuzzing could not reach them.
        globex = env.store.get(VPS, "globex-web")
        assert globex.spec.subscription == "globex-sub" and globex.metadata.generation == 1
