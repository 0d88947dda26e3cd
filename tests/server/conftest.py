"""The API tests' model and server: one per test module (ARCH in a module picks another version)."""

from __future__ import annotations

import openai
import pytest

from roost.core.runtime import Runtime
from roost.server.run import ApiServer


@pytest.fixture(scope="module")
def runtime(make_checkpoint, request):
    rt = Runtime()
    rt.load(make_checkpoint(getattr(request.module, "ARCH", "v6.0")), "cpu fp32")
    yield rt
    rt.unload()


@pytest.fixture(scope="module")
def server(runtime):
    srv = ApiServer(runtime, port=0).start()
    yield srv
    srv.stop()
    assert not srv.running


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="not-needed-on-loopback", max_retries=0, timeout=60)
