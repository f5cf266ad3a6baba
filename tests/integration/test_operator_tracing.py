"""The operator's reconcile spans reach a real OTLP/HTTP receiver on loopback."""

from __future__ import annotations

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

pytestmark = pytest.mark.integration

SCRIPT = """
import sys
from penstock.controller.tracing import configure_tracing, reconcile_span
provider = configure_tracing(sys.argv[1])
with reconcile_span("search", "rag", 7) as span:
    span.set_attribute("penstock.reconcile.result", "changed")
provider.shutdown()
"""


def test_reconcile_span_is_exported_with_pipeline_attributes() -> None:
    received: list[tuple[str, bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()
            self.wfile.write(b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        subprocess.run([sys.executable, "-c", SCRIPT, endpoint], check=True, timeout=60)
    finally:
        server.shutdown()
    assert [path for path, _ in received] == ["/v1/traces"]
    request = ExportTraceServiceRequest.FromString(received[0][1])
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert [s.name for s in spans] == ["penstock.reconcile"]
    attributes = {a.key: a.value for a in spans[0].attributes}
    assert attributes["penstock.pipeline"].string_value == "rag"
    assert attributes["k8s.namespace.name"].string_value == "search"
    assert attributes["penstock.reconcile.result"].string_value == "changed"
    resource = {a.key: a.value.string_value for a in request.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "penstock-operator"
