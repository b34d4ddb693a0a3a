"""The contract compiles for other languages: Go (`protoc` + `protoc-gen-go`, Debian's
protobuf-compiler and protoc-gen-go, the APIv2 plugin: the older golang-goprotobuf-dev
cannot compile proto3 `optional`) and Node.js (`@grpc/proto-loader` from npm),
and every field, message and RPC of it carries a comment.

Each compiler test skips, saying why, when its tool is absent (scripts/test_deps.sh
installs them)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import google.rpc
import pytest

from service._proto.semcache.v1 import semcache_pb2 as pb

REPO = Path(__file__).resolve().parent.parent
PROTOS = REPO / "protos"
PROTO = PROTOS / "semcache" / "v1" / "semcache.proto"
NODE_DIR = REPO / "tests" / "node"
# googleapis-common-protos ships google/rpc/status.proto, which semcache.proto imports
GOOGLE_PROTOS = Path(google.rpc.__path__[0]).parent.parent
PROTOC, PROTOC_GEN_GO = shutil.which("protoc"), shutil.which("protoc-gen-go")
NODE, NPM = shutil.which("node"), shutil.which("npm")
RPCS = set(pb.DESCRIPTOR.services_by_name["SemanticCacheService"].methods_by_name)
_DECLARATION = re.compile(
    r"^(message|enum|service|rpc|oneof)\b"
    r"|^(repeated |optional )?[\w.]+ \w+ = \d+;"
    r"|^[A-Z_0-9]+ = \d+;"
)


@pytest.mark.skipif(
    PROTOC is None or PROTOC_GEN_GO is None,
    reason="protoc or protoc-gen-go missing (Debian: protobuf-compiler protoc-gen-go)",
)
def test_the_proto_compiles_for_go(tmp_path: Path) -> None:
    assert PROTOC is not None
    done = subprocess.run(
        [
            PROTOC,
            f"-I{PROTOS}",
            f"-I{GOOGLE_PROTOS}",
            f"--go_out={tmp_path}",
            "--go_opt=paths=source_relative",
            str(PROTO.relative_to(PROTOS)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    generated = (tmp_path / "semcache" / "v1" / "semcache.pb.go").read_text()
    assert "package semcachev1" in generated
    assert "type PutEntriesRequest struct" in generated
    assert "type TenantStats struct" in generated


def _proto_loader() -> None:
    """Install the locked npm packages once if @grpc/proto-loader is missing."""
    if (NODE_DIR / "node_modules" / "@grpc" / "proto-loader" / "package.json").exists():
        return
    assert NPM is not None
    done = subprocess.run(
        [NPM, "ci", "--no-audit", "--no-fund"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"npm ci failed:\n{done.stderr}"


@pytest.mark.skipif(
    NODE is None or NPM is None, reason="node and npm are not installed (Debian: nodejs, npm)"
)
def test_node_proto_loader_sees_every_rpc() -> None:
    _proto_loader()
    assert NODE is not None
    done = subprocess.run(
        [NODE, "load_proto.mjs", str(PROTOS), str(GOOGLE_PROTOS)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    methods = json.loads(done.stdout)
    assert set(methods) == RPCS
    assert methods["StreamComplete"]["responseStream"] is True
    assert methods["PutEntries"]["path"] == "/semcache.v1.SemanticCacheService/PutEntries"


def test_every_declaration_of_the_proto_has_a_comment() -> None:
    lines = PROTO.read_text().splitlines()
    bare = []
    for index, line in enumerate(lines):
        if not _DECLARATION.match(line.strip()):
            continue
        above = index - 1
        while lines[above].strip().startswith("reserved"):
            above -= 1
        if not lines[above].strip().startswith("//"):
            bare.append(f"line {index + 1}: {line.strip()}")
    assert bare == []


def test_the_proto_names_its_go_and_java_packages() -> None:
    options = pb.DESCRIPTOR.GetOptions()
    assert options.go_package == "github.com/semcache/semcache/gen/go/semcache/v1;semcachev1"
    assert (options.java_package, options.java_multiple_files) == ("dev.semcache.v1", True)
