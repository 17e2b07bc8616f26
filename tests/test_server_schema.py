"""The API against its own OpenAPI document, by schemathesis, on a real gunicorn server.

Requests are generated from the document's request schemas, valid ones and (negative mode) invalid ones. The oracle
is strict: no 5xx; every status, content type, header and JSON body one the document allows for that operation; an
invalid request never accepted (4xx, not 200); routes that need a key refuse a request without one. Examples per
operation are bounded so the whole run stays within seconds.
"""

from __future__ import annotations

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from serving import LiveServer, tiny_encoder

from server.openapi import document
from store.paths import Workspace

KEY = "schema-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


schema = schemathesis.openapi.from_dict(document())  # the very document /openapi.json serves
schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
    with_security_parameters=False,  # every call carries a valid key; test_server.py::test_auth covers refusals
)
# Whether bytes are a sound image is beyond JSON Schema: a schema-valid body may still hold no image (400 corrupt, 415
# not an image) or too big a one (413), /v1/predict has no head to answer on this server (404), and a schema-valid frame
# URL signature is still not a valid one (403). Nothing else.
schema.config.checks.positive_data_acceptance.expected_statuses = ["2xx", "400", "401", "403", "404", "413", "415"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ws = Workspace.at(tmp_path_factory.mktemp("schema"))
    _, card = tiny_encoder(ws)
    live = LiveServer(ws.root, {"encoder": card.id, "max_batch": 8}, env={"FTH_API_KEYS": KEY}).start()
    yield live
    assert live.stop() == 0, live.log()


def test_served_document_is_the_one_tested(server):
    import requests

    assert requests.get(f"{server.url}/openapi.json", timeout=10).json() == document()


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case, server):
    case.call_and_validate(base_url=server.url, headers=AUTH, timeout=30)


def test_document_refuses_the_empty_base64_image_the_server_refuses():
    """Finding 15 (schemathesis ST202): the document allowed `{"images": [""]}`, which the server answers 400."""
    validator = jsonschema_rs.Draft4Validator(document()["components"]["schemas"]["ImagesJSON"])
    assert not validator.is_valid({"images": [""]})
    assert validator.is_valid({"images": ["aGVsbG8="]})


def test_a_request_line_over_the_limit_is_a_documented_414(server):
    """Found by the fuzz test above in a fresh-clone run: many repeated `exp` parameters made a request line gunicorn
    refuses with 414, which the document did not list. The routes with query parameters now list it."""
    import requests

    resp = requests.get(f"{server.url}/v1/frames/x", params={"exp": "1", "sig": "a" * 5000}, headers=AUTH, timeout=10)
    assert resp.status_code == 414 and resp.json()["error"]["code"] == "uri_too_long", resp.text
    paths = document()["paths"]
    assert "414" in paths["/v1/frames/{frame_id}"]["get"]["responses"]
    assert "414" in paths["/v1/predict"]["post"]["responses"]
