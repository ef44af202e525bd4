"""Tests of the stand-in for the Hugging Face Hub used only by the project's test lab.

The server runs as a subprocess on 127.0.0.1 with two synthetic repos (the 20-shard model layout
with 64 KiB shards, and a one-shard repo with a 12 MiB shard); unmodified ``huggingface_hub``
and the ``hf`` CLI talk to it through ``HF_ENDPOINT`` in child processes, because
``huggingface_hub`` reads ``HF_ENDPOINT`` at import time.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.nolab

STANDIN_DIR = Path(__file__).resolve().parents[1] / "standins" / "hf_hub_standin"
FIXTURE_PY = STANDIN_DIR / "fixture.py"
SERVER_PY = STANDIN_DIR / "server.py"
HF_CLI = Path(sys.executable).parent / "hf"
REPO = "saricles/MiniMax-M2.5-REAP-172B-A10B-NVFP4-GB10"
BIG_REPO = "standin/one-big-shard"
BIG_SHARD = "model-00001-of-00001.safetensors"
SHARD_SIZE = 64 * 1024
BIG_SHARD_SIZE = 12 * 1024 * 1024
DOWNLOAD_CHUNK = 10 * 1024 * 1024  # huggingface_hub's DOWNLOAD_CHUNK_SIZE
SPECIAL_TOKENS = ["<think>", "</think>", "]~!b[", "]~b]", "[e~[", "<minimax:tool_call>"]


@dataclass
class Hub:
    """A running stand-in server and the fixtures it serves."""

    url: str
    proc: subprocess.Popen[bytes]
    root: Path
    meta: dict[str, Any]
    big_root: Path
    big_meta: dict[str, Any]
    log: Path

    def control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/_standin/{path}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def file_meta(self, path: str) -> dict[str, Any]:
        return next(f for f in self.meta["files"] if f["path"] == path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _wait_for_port(port_file: Path, proc: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if port_file.exists():
            return int(port_file.read_text())
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def _start_server(
    args: list[str], workdir: Path, name: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str, Path]:
    port_file = workdir / f"{name}.port"
    log = workdir / f"{name}.log"
    with open(log, "wb") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, str(SERVER_PY), *args, "--port", "0", "--port-file", str(port_file)],
            stdout=subprocess.DEVNULL,
            stderr=log_fh,
            env=env,
        )
    port = _wait_for_port(port_file, proc, log)
    return proc, f"http://127.0.0.1:{port}", log


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    work = tmp_path_factory.mktemp("hf_hub_standin")
    root, big_root = work / "repo", work / "big"
    builds = [
        subprocess.Popen(
            [sys.executable, str(FIXTURE_PY), "--out", str(root), "--shard-size", str(SHARD_SIZE)]
        ),
        subprocess.Popen(
            [
                *(sys.executable, str(FIXTURE_PY), "--out", str(big_root), "--shards", "1"),
                *("--shard-size", str(BIG_SHARD_SIZE), "--seed", "1"),
            ]
        ),
    ]
    assert [b.wait(timeout=60) for b in builds] == [0, 0]
    proc, url, log = _start_server(
        ["--repo", f"{REPO}={root}", "--repo", f"{BIG_REPO}={big_root}", "--page-size", "10"],
        work,
        "main",
    )
    try:
        yield Hub(
            url=url,
            proc=proc,
            root=root,
            meta=json.loads((root / "repo.json").read_text()),
            big_root=big_root,
            big_meta=json.loads((big_root / "repo.json").read_text()),
            log=log,
        )
    finally:
        _stop(proc)


@pytest.fixture(autouse=True)
def _clean_server(request: pytest.FixtureRequest) -> None:
    if "hub" in request.fixturenames:
        hub: Hub = request.getfixturevalue("hub")
        hub.control("DELETE", "faults")
        hub.control("POST", "reset")


def _hf_env(hub: Hub, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    return env


def _run_hf_python(hub: Hub, tmp_path: Path, code: str) -> Any:
    """Run ``code`` with huggingface_hub against the stand-in; its last stdout line, as JSON."""
    prelude = textwrap.dedent(
        """
        import json, hashlib
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download

        def outcome(fn):
            try:
                return {"ok": fn()}
            except Exception as exc:
                names = [c.__name__ for c in type(exc).__mro__]
                status = getattr(getattr(exc, "response", None), "status_code", None)
                return {"error": names, "message": str(exc), "status": status}
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        env=_hf_env(hub, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_tree_matches(hub: Hub, directory: Path) -> None:
    local = {
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(directory).parts
    }
    assert local == {f["path"] for f in hub.meta["files"]}
    for entry in hub.meta["files"]:
        assert _sha256(directory / entry["path"]) == entry["sha256"], entry["path"]


def _urlopen(request: urllib.request.Request | str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _raw(
    method: str, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request, redirects not followed (http.client)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, target, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _resolve_url(hub: Hub, path: str, repo: str = REPO, rev: str = "main") -> str:
    return f"{hub.url}/{repo}/resolve/{rev}/{path}"


# -- fixture content ----------------------------------------------------------------------


def test_fixture_layout_and_config(hub: Hub) -> None:
    paths = {f["path"] for f in hub.meta["files"]}
    shards = {f"model-{i:05d}-of-00020.safetensors" for i in range(1, 21)}
    assert shards <= paths
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        ".gitattributes",
    } <= paths
    lfs = {f["path"] for f in hub.meta["files"] if f["lfs"]}
    assert lfs == shards | {"tokenizer.json"}
    assert len(hub.meta["sha"]) == 40
    for entry in hub.meta["files"]:
        data = (hub.root / "files" / entry["path"]).read_bytes()
        assert len(data) == entry["size"]
        git = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
        assert git == entry["git_oid"]
    config = json.loads((hub.root / "files" / "config.json").read_text())
    assert config["architectures"] == ["MiniMaxM2ForCausalLM"]
    assert config["model_type"] == "minimax_m2"
    expected = {
        "hidden_size": 3072,
        "num_hidden_layers": 62,
        "num_attention_heads": 48,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "num_local_experts": 192,
        "num_experts_per_tok": 8,
        "max_position_embeddings": 196608,
        "vocab_size": 200064,
        "rope_theta": 5000000,
    }
    assert {k: config[k] for k in expected} == expected
    quant = config["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors"
    assert quant["format"] == "nvfp4-pack-quantized"
    assert quant["ignore"] == ["lm_head", "model.embed_tokens", "re:.*block_sparse_moe\\.gate$"]
    sizes = [f["size"] for f in hub.meta["files"] if f["path"] in shards]
    assert all(0.9 * SHARD_SIZE < s < 1.4 * SHARD_SIZE for s in sizes), sizes


def test_fixture_is_deterministic(hub: Hub, tmp_path: Path) -> None:
    out = tmp_path / "again"
    subprocess.run(
        [sys.executable, str(FIXTURE_PY), "--out", str(out), "--shard-size", str(SHARD_SIZE)],
        check=True,
        capture_output=True,
    )
    again = json.loads((out / "repo.json").read_text())
    assert again["sha"] == hub.meta["sha"]
    assert again["files"] == hub.meta["files"]


def test_shards_are_valid_safetensors_matching_the_index(hub: Hub) -> None:
    import safetensors

    files = hub.root / "files"
    index = json.loads((files / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {
        f"model-{i:05d}-of-00020.safetensors" for i in range(1, 21)
    }
    total = 0
    seen: dict[str, str] = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors = safetensors.deserialize((files / shard).read_bytes())  # type: ignore[no-untyped-call]
        for name, info in tensors:
            seen[name] = shard
            total += len(info["data"])
    assert seen == index["weight_map"]
    assert index["metadata"]["total_size"] == total
    layers = {n.split(".")[2] for n in seen if n.startswith("model.layers.")}
    assert layers == {str(i) for i in range(62)}
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= set(seen)


def test_shards_load_with_safe_open(hub: Hub) -> None:
    # numpy (framework="np") is in the test extras, as safetensors and tokenizers are
    from safetensors import safe_open

    files = hub.root / "files"
    index = json.loads((files / "model.safetensors.index.json").read_text())
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(files / shard), framework="np") as handle:
            names = set(handle.keys())
            assert names == {n for n, s in index["weight_map"].items() if s == shard}
            packed = sorted(n for n in names if n.endswith("weight_packed"))
            tensor = handle.get_tensor(packed[0])
            assert tensor.dtype.name == "uint8" and tensor.shape[1] == 64
            assert handle.get_slice(packed[0].replace("packed", "scale")).get_dtype() == "F8_E4M3"


def test_tokenizer_loads_and_keeps_special_tokens_whole(hub: Hub) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(hub.root / "files" / "tokenizer.json"))
    assert 1000 <= tokenizer.get_vocab_size() <= 10000
    ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    assert all(isinstance(i, int) for i in ids.values())
    encoding = tokenizer.encode("<think>hello</think>")
    assert encoding.ids[0] == ids["<think>"] and encoding.ids[-1] == ids["</think>"]
    assert encoding.tokens[0] == "<think>" and encoding.tokens[-1] == "</think>"
    assert tokenizer.decode(encoding.ids, skip_special_tokens=False) == "<think>hello</think>"
    config = json.loads((hub.root / "files" / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "]~!b[" and config["eos_token"] == "[e~["
    assert config["chat_template"]


# -- downloads with huggingface_hub -----------------------------------------------------------


def test_snapshot_download_is_byte_identical_and_counted(hub: Hub, tmp_path: Path) -> None:
    target = tmp_path / "snapshot"
    result = _run_hf_python(
        hub, tmp_path, f"print(json.dumps(snapshot_download({REPO!r}, local_dir={str(target)!r})))"
    )
    assert Path(result) == target
    _assert_tree_matches(hub, target)
    stats = hub.control("GET", "stats")
    assert stats["bytes_served"] == hub.meta["total_size"]
    assert stats["clients"] == {"127.0.0.1": hub.meta["total_size"]}
    assert stats["files"] == {f["path"]: f["size"] for f in hub.meta["files"]}
    assert stats["requests"] >= len(hub.meta["files"]) * 2  # a HEAD and a GET per file


def test_hf_cli_download_and_cache_verify(hub: Hub, tmp_path: Path) -> None:
    # huggingface_hub, a dependency of the project, installs the hf CLI
    assert HF_CLI.exists(), f"no hf CLI next to {sys.executable}: reinstall with 'make setup'"
    env = _hf_env(hub, tmp_path)
    target = tmp_path / "cli"
    run = subprocess.run(
        [str(HF_CLI), "download", REPO, "--local-dir", str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    _assert_tree_matches(hub, target)
    help_text = subprocess.run(
        [str(HF_CLI), "cache", "--help"], env=env, capture_output=True, text=True, timeout=60
    ).stdout
    assert "verify" in help_text, f"this hf CLI has no 'cache verify':\n{help_text}"
    verify = [str(HF_CLI), "cache", "verify", REPO, "--local-dir", str(target)]
    verify += ["--fail-on-missing-files"]
    ok = subprocess.run(verify, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    shard = target / "model-00007-of-00020.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    bad = subprocess.run(verify, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "model-00007-of-00020.safetensors" in bad.stdout + bad.stderr


def test_revision_resolution_and_tree_listing(hub: Hub, tmp_path: Path) -> None:
    result = _run_hf_python(
        hub,
        tmp_path,
        f"""
        api = HfApi()
        info = api.model_info({REPO!r})
        by_sha = api.model_info({REPO!r}, revision=info.sha, files_metadata=True)
        tree = list(api.list_repo_tree({REPO!r}, recursive=True))
        refs = api.list_repo_refs({REPO!r})
        print(json.dumps({{
            "sha": info.sha,
            "sha_by_sha": by_sha.sha,
            "siblings": sorted(s.rfilename for s in info.siblings),
            "lfs": {{s.rfilename: s.lfs.sha256 for s in by_sha.siblings if s.lfs}},
            "tree": {{f.path: [f.size, f.lfs.sha256 if f.lfs else None] for f in tree}},
            "main": [b.target_commit for b in refs.branches if b.name == "main"],
            "files": api.list_repo_files({REPO!r}),
        }}))
        """,
    )
    sha = hub.meta["sha"]
    files = hub.meta["files"]
    assert result["sha"] == sha and result["sha_by_sha"] == sha and result["main"] == [sha]
    assert result["siblings"] == sorted(f["path"] for f in files)
    assert result["lfs"] == {f["path"]: f["sha256"] for f in files if f["lfs"]}
    assert result["tree"] == {
        f["path"]: [f["size"], f["sha256"] if f["lfs"] else None] for f in files
    }
    assert sorted(result["files"]) == sorted(f["path"] for f in files)


def test_tree_is_paginated_with_link_header(hub: Hub) -> None:
    url: str | None = f"{hub.url}/api/models/{REPO}/tree/main?recursive=true"
    paths: list[str] = []
    pages = 0
    while url is not None:
        status, headers, body = _urlopen(url)
        assert status == 200
        page = json.loads(body)
        assert len(page) <= 10
        paths += [e["path"] for e in page]
        pages += 1
        link = headers.get("Link")
        url = link.split(";")[0].strip("<> ") if link else None
    assert pages == 3
    assert paths == sorted(f["path"] for f in hub.meta["files"])


def test_range_requests_and_resolve_headers(hub: Hub) -> None:
    path = "model-00003-of-00020.safetensors"
    content = (hub.root / "files" / path).read_bytes()
    entry = hub.file_meta(path)

    def get(range_header: str | None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(_resolve_url(hub, path), method=method)
        if range_header:
            request.add_header("Range", range_header)
        return _urlopen(request)

    status, headers, body = get("bytes=100-199")
    assert status == 206 and body == content[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(content)}"
    assert headers["Content-Length"] == "100"
    status, _, body = get(f"bytes={len(content) - 10}-")
    assert status == 206 and body == content[-10:]
    status, _, body = get("bytes=-7")
    assert status == 206 and body == content[-7:]
    status, headers, _ = get(f"bytes={len(content)}-")
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(content)}"
    # an LFS file: 302 to another origin, the file's facts on the redirect (huggingface.co)
    status, headers, body = _raw("HEAD", _resolve_url(hub, path))
    assert status == 302 and body == b""
    assert headers["X-Repo-Commit"] == hub.meta["sha"]
    assert headers["X-Linked-Etag"] == f'"{entry["sha256"]}"'
    assert headers["X-Linked-Size"] == str(len(content))
    cdn = headers["Location"]
    assert urllib.parse.urlsplit(cdn).port != urllib.parse.urlsplit(hub.url).port
    status, headers, body = _raw("HEAD", cdn)
    assert status == 200 and body == b""
    assert headers["Content-Length"] == str(len(content))
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"] != f'"{entry["sha256"]}"'  # the CDN's own ETag
    assert "X-Linked-Etag" not in headers
    status, headers, _ = _urlopen(
        urllib.request.Request(_resolve_url(hub, "config.json", rev=hub.meta["sha"]), method="HEAD")
    )
    assert status == 200
    assert headers["ETag"] == f'"{hub.file_meta("config.json")["git_oid"]}"'
    assert "X-Linked-Etag" not in headers
    downloads = hub.control("GET", "stats")["downloads"]
    assert sum(d["sent"] for d in downloads) == 100 + 10 + 7


def test_keep_alive_serves_several_requests_on_one_connection(hub: Hub) -> None:
    host, port = hub.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for path in ("config.json", "README.md", "model-00001-of-00020.safetensors"):
            lfs = path.endswith(".safetensors")
            connection.request("HEAD", f"/{REPO}/resolve/main/{path}")
            head = connection.getresponse()
            assert head.status == (302 if lfs else 200) and head.read() == b""
            connection.request("GET", f"/{REPO}/resolve/main/{path}")
            response = connection.getresponse()
            body = response.read()
            if lfs:
                assert response.status == 302 and body == b""
            else:
                assert body == (hub.root / "files" / path).read_bytes()
            connection.request("GET", f"/api/models/{REPO}/tree/nope-rev")
            missing = connection.getresponse()
            assert missing.status == 404 and missing.getheader("X-Error-Code") == "RevisionNotFound"
            missing.read()
    finally:
        connection.close()


# -- faults and errors ------------------------------------------------------------------------


def test_corrupt_once_flips_a_byte_once(hub: Hub, tmp_path: Path) -> None:
    path = "model-00005-of-00020.safetensors"
    hub.control("POST", "faults", {"corrupt_once": path})
    result = _run_hf_python(
        hub,
        tmp_path,
        f"""
        def sha(force):
            p = hf_hub_download({REPO!r}, {path!r}, local_dir={str(tmp_path / "d")!r},
                                force_download=force)
            return hashlib.sha256(open(p, "rb").read()).hexdigest()
        print(json.dumps([sha(False), sha(True)]))
        """,
    )
    assert result[0] != hub.file_meta(path)["sha256"]
    assert result[1] == hub.file_meta(path)["sha256"]
    assert "corrupt_once" not in hub.control("GET", "faults")
    assert [d["corrupted"] for d in hub.control("GET", "stats")["downloads"]] == [True, False]


def test_token_required_wrong_missing_and_right(hub: Hub, tmp_path: Path) -> None:
    hub.control("POST", "faults", {"require_token": "s3cret-token"})
    result = _run_hf_python(
        hub,
        tmp_path,
        f"""
        print(json.dumps({{
            "wrong": outcome(lambda: snapshot_download({REPO!r}, token="wrong-token",
                                                       local_dir={str(tmp_path / "w")!r})),
            "missing": outcome(lambda: hf_hub_download({REPO!r}, "config.json", token=False,
                                                       local_dir={str(tmp_path / "m")!r})),
            "right": outcome(lambda: hf_hub_download({REPO!r}, "config.json", token="s3cret-token",
                                                     local_dir={str(tmp_path / "r")!r})),
        }}))
        """,
    )
    assert "HfHubHTTPError" in result["wrong"]["error"]
    assert "RepositoryNotFoundError" not in result["wrong"]["error"]
    assert result["wrong"]["status"] == 401
    assert "Invalid credentials" in result["wrong"]["message"]
    # a private repo is not found for an anonymous caller, with 401 (huggingface/datasets#4472)
    assert "RepositoryNotFoundError" in result["missing"]["error"]
    assert result["missing"]["status"] == 401
    assert Path(result["right"]["ok"]).read_bytes() == (hub.root / "files/config.json").read_bytes()
    log = hub.log.read_text()
    assert "s3cret-token" not in log and "wrong-token" not in log


def test_server_cli_token_port_file_and_env_faults(hub: Hub, tmp_path: Path) -> None:
    env = dict(os.environ, HF_HUB_STANDIN_FAULTS=json.dumps({"delay_s": 0.01}))
    proc, url, log = _start_server(
        ["--repo", f"{REPO}={hub.root}", "--token", "cli-token"], tmp_path, "tok", env
    )
    try:
        resolve = f"{url}/{REPO}/resolve/main/config.json"
        status, headers, _ = _urlopen(resolve)
        assert status == 401 and headers["X-Error-Code"] == "RepoNotFound"
        request = urllib.request.Request(resolve, headers={"Authorization": "Bearer nope"})
        status, headers, body = _urlopen(request)
        assert status == 401 and "Invalid credentials" in headers["X-Error-Message"]
        assert "Invalid credentials" in json.loads(body)["error"]
        request = urllib.request.Request(resolve, headers={"Authorization": "Bearer cli-token"})
        status, _, body = _urlopen(request)
        assert status == 200 and body == (hub.root / "files" / "config.json").read_bytes()
        status, _, body = _urlopen(f"{url}/_standin/faults")
        assert status == 200 and json.loads(body) == {"delay_s": 0.01}
    finally:
        _stop(proc)
    assert "cli-token" not in log.read_text() and "nope" not in log.read_text()


def test_dropped_connection_small_file_is_refetched_whole(hub: Hub, tmp_path: Path) -> None:
    # huggingface_hub buffers the body in 10 MiB chunks, so a drop before the first chunk is
    # complete leaves nothing written: its retry (after 1 s) asks for the whole file, no Range.
    path = "model-00009-of-00020.safetensors"
    hub.control("POST", "faults", {"drop_after_bytes": 10000, "drop_count": 1})
    result = _run_hf_python(
        hub,
        tmp_path,
        f"""
        p = hf_hub_download({REPO!r}, {path!r}, local_dir={str(tmp_path / "d")!r})
        print(json.dumps(hashlib.sha256(open(p, "rb").read()).hexdigest()))
        """,
    )
    assert result == hub.file_meta(path)["sha256"]
    downloads = [d for d in hub.control("GET", "stats")["downloads"] if d["path"] == path]
    assert [(d["dropped"], d["sent"], d["range"]) for d in downloads] == [
        (True, 10000, None),
        (False, hub.file_meta(path)["size"], None),
    ]
    assert hub.control("GET", "faults")["drop_count"] == 0


def test_dropped_connection_large_file_resumes_with_range(hub: Hub, tmp_path: Path) -> None:
    # Past the first 10 MiB chunk, huggingface_hub resumes from the bytes it has written.
    drop_at = DOWNLOAD_CHUNK + 512 * 1024
    hub.control("POST", "faults", {"drop_after_bytes": drop_at, "drop_count": 1})
    result = _run_hf_python(
        hub,
        tmp_path,
        f"""
        p = hf_hub_download({BIG_REPO!r}, {BIG_SHARD!r}, local_dir={str(tmp_path / "d")!r})
        print(json.dumps(hashlib.sha256(open(p, "rb").read()).hexdigest()))
        """,
    )
    big = next(f for f in hub.big_meta["files"] if f["path"] == BIG_SHARD)
    assert big["size"] > drop_at
    assert result == big["sha256"]
    downloads = [d for d in hub.control("GET", "stats")["downloads"] if d["path"] == BIG_SHARD]
    assert [(d["status"], d["dropped"], d["sent"], d["range"]) for d in downloads] == [
        (200, True, drop_at, None),
        (206, False, big["size"] - DOWNLOAD_CHUNK, f"bytes={DOWNLOAD_CHUNK}-"),
    ]


def test_connection_dropped_every_time_fails_after_retries(hub: Hub, tmp_path: Path) -> None:
    # No progress (drops inside the first 10 MiB chunk): 1 try + 5 retries 1 s apart, then the
    # transport error surfaces as is.
    path = "model-00011-of-00020.safetensors"
    hub.control("POST", "faults", {"drop_after_bytes": 1000})
    result = _run_hf_python(
        hub,
        tmp_path,
        f"""
        print(json.dumps(outcome(lambda: hf_hub_download({REPO!r}, {path!r},
                                                         local_dir={str(tmp_path / "d")!r}))))
        """,
    )
    assert "RemoteProtocolError" in result["error"], result
    downloads = hub.control("GET", "stats")["downloads"]
    assert [(d["sent"], d["range"]) for d in downloads] == [(1000, None)] * 6
    assert not (tmp_path / "d" / path).exists()


def test_unknown_repo_revision_and_file(hub: Hub, tmp_path: Path) -> None:
    result = _run_hf_python(
        hub,
        tmp_path,
        f"""
        print(json.dumps({{
            "repo": outcome(lambda: snapshot_download("nobody/nothing",
                                                      local_dir={str(tmp_path / "a")!r})),
            "revision": outcome(lambda: snapshot_download({REPO!r}, revision="v9.9",
                                                          local_dir={str(tmp_path / "b")!r})),
            "file": outcome(lambda: hf_hub_download({REPO!r}, "missing.bin",
                                                    local_dir={str(tmp_path / "c")!r})),
            "file_api": outcome(lambda: HfApi().file_exists({REPO!r}, "missing.bin")),
        }}))
        """,
    )
    assert "RepositoryNotFoundError" in result["repo"]["error"]
    assert "RevisionNotFoundError" in result["revision"]["error"]
    assert "RemoteEntryNotFoundError" in result["file"]["error"]
    assert result["file_api"] == {"ok": False}


def test_status_fault_by_glob(hub: Hub) -> None:
    hub.control("POST", "faults", {"status": {"*.safetensors": 404}})
    status, headers, _ = _urlopen(_resolve_url(hub, "model-00001-of-00020.safetensors"))
    assert status == 404 and headers["X-Error-Code"] == "EntryNotFound"
    assert _urlopen(_resolve_url(hub, "config.json"))[0] == 200
    hub.control("POST", "faults", {"status": {"*": 503}})
    assert _urlopen(f"{hub.url}/api/models/{REPO}")[0] == 503
    assert _urlopen(f"{hub.url}/_standin/stats")[0] == 200


def test_rate_limit_and_delay(hub: Hub) -> None:
    path = "model-00002-of-00020.safetensors"
    size = hub.file_meta(path)["size"]
    rate = size * 2  # bytes per second: about half a second for the file
    piece = rate // 20  # the stand-in paces a body in pieces of a twentieth of the rate
    hub.control("POST", "faults", {"rate_limit_bps": rate})
    arrivals: list[tuple[float, int]] = []  # (seconds since the request, bytes received by then)
    body = b""
    started = time.monotonic()
    with urllib.request.urlopen(_resolve_url(hub, path), timeout=10) as response:
        status = response.status
        while data := response.read1(65536):
            body += data
            arrivals.append((time.monotonic() - started, len(body)))
    assert status == 200 and body == (hub.root / "files" / path).read_bytes()
    # Paced all along, not held back and then sent at once: by any moment no more than one
    # piece beyond what the rate allows had arrived, so the body took at least (size - piece)
    # / rate. (Lower bounds only: a busy machine makes a download slower, never faster.)
    assert all(got <= rate * elapsed + piece for elapsed, got in arrivals), arrivals
    assert arrivals[-1][0] >= (size - piece) / rate
    [download] = hub.control("GET", "stats")["downloads"]
    assert (download["status"], download["sent"], download["dropped"]) == (200, size, False)
    hub.control("DELETE", "faults")
    hub.control("POST", "faults", {"delay_s": 0.3})
    started = time.monotonic()
    assert _urlopen(_resolve_url(hub, "config.json"))[0] == 200
    assert time.monotonic() - started >= 0.3


def test_faults_api_validates_and_merges(hub: Hub) -> None:
    request = urllib.request.Request(
        f"{hub.url}/_standin/faults", data=b'{"drop_after": 1}', method="POST"
    )
    status, _, body = _urlopen(request)
    assert status == 400 and "unknown fault" in json.loads(body)["error"]
    assert hub.control("POST", "faults", {"delay_s": 0}) == {"delay_s": 0.0}
    merged = hub.control("POST", "faults", {"drop_after_bytes": 5})
    assert merged == {"delay_s": 0.0, "drop_after_bytes": 5, "drop_count": -1}
    assert hub.control("POST", "faults", {"delay_s": None}) == {
        "drop_after_bytes": 5,
        "drop_count": -1,
    }
    assert hub.control("DELETE", "faults") == {}
    assert _urlopen(f"{hub.url}/api/agent-harnesses")[0] == 404


# -- as strict as huggingface.co --------------------------------------------------------------


def test_cdn_refuses_a_token_an_expired_url_and_a_forged_one(hub: Hub) -> None:
    path = "model-00004-of-00020.safetensors"
    status, headers, _ = _raw("GET", _resolve_url(hub, path))
    assert status == 302
    location = headers["Location"]
    status, _, body = _raw("GET", location, {"Authorization": "Bearer anything"})
    assert status == 400 and b"<Code>InvalidArgument</Code>" in body
    assert _raw("GET", location.replace("Signature=", "Signature=0"))[0] == 403
    assert _raw("GET", location)[2] == (hub.root / "files" / path).read_bytes()
    hub.control("POST", "faults", {"cdn_url_ttl_s": -1.0})
    expired = _raw("GET", _resolve_url(hub, path))[1]["Location"]
    status, _, body = _raw("GET", expired)
    assert status == 403 and b"Request has expired" in body


def test_range_faults_answer_200_or_416_to_a_range(hub: Hub) -> None:
    path = "model-00006-of-00020.safetensors"
    content = (hub.root / "files" / path).read_bytes()
    request = urllib.request.Request(_resolve_url(hub, path), headers={"Range": "bytes=10-"})
    hub.control("POST", "faults", {"range_ignore": "*.safetensors"})
    status, _, body = _urlopen(request)
    assert status == 200 and body == content
    hub.control("DELETE", "faults")
    hub.control("POST", "faults", {"range_416": 1})
    assert _urlopen(request)[0] == 416
    status, _, body = _urlopen(request)
    assert status == 206 and body == content[10:]


def test_gated_repo_lists_anonymously_and_refuses_downloads(hub: Hub) -> None:
    hub.control("POST", "faults", {"gated": {REPO: ["granted-token"]}, "tokens": ["other-token"]})
    info = json.loads(_urlopen(f"{hub.url}/api/models/{REPO}/revision/main")[2])
    assert info["gated"] == "auto" and info["sha"] == hub.meta["sha"]
    assert _urlopen(f"{hub.url}/api/models/{REPO}/tree/main")[0] == 200
    url = _resolve_url(hub, "config.json")
    status, headers, _ = _raw("GET", url)
    assert status == 401 and headers["X-Error-Code"] == "GatedRepo"
    status, headers, _ = _raw("GET", url, {"Authorization": "Bearer other-token"})
    assert status == 403 and headers["X-Error-Code"] == "GatedRepo"
    assert "not in the authorized list" in headers["X-Error-Message"]
    status, headers, _ = _raw("GET", url, {"Authorization": "Bearer unknown-token"})
    assert status == 401
    assert headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    assert _raw("GET", url, {"Authorization": "Bearer granted-token"})[0] == 200


def test_unknown_repo_is_401_anonymously_and_404_with_a_token(hub: Hub) -> None:
    hub.control("POST", "faults", {"tokens": ["some-token"]})
    for url in (f"{hub.url}/api/models/nobody/nothing", _resolve_url(hub, "x", "nobody/nothing")):
        status, headers, _ = _raw("GET", url)
        assert (status, headers["X-Error-Code"]) == (401, "RepoNotFound")
        status, headers, _ = _raw("GET", url, {"Authorization": "Bearer some-token"})
        assert (status, headers["X-Error-Code"]) == (404, "RepoNotFound")


def test_rate_limit_windows_answer_429_with_the_hubs_headers(hub: Hub) -> None:
    hub.control("POST", "faults", {"quota": {"api": 2, "resolvers": 1}, "window_s": 60.0})
    revision = f"{hub.url}/api/models/{REPO}/revision/main"
    status, headers, _ = _raw("GET", revision)
    assert status == 200 and headers["RateLimit"].startswith('"api";r=1;t=')
    assert headers["RateLimit-Policy"] == '"fixed window";"api";q=2;w=60'
    assert _raw("GET", revision)[0] == 200
    status, headers, _ = _raw("GET", revision)
    assert status == 429 and headers["RateLimit"].startswith('"api";r=0;t=')
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert _raw("GET", _resolve_url(hub, "config.json"))[0] == 200  # its own bucket
    status, headers, _ = _raw("GET", _resolve_url(hub, "config.json"))
    assert status == 429 and headers["RateLimit"].startswith('"resolvers";r=0;')
    hub.control("POST", "reset")
    hub.control("DELETE", "faults")
    throttle = {"*/revision/*": {"count": 2, "retry_after": [3, 7]}}
    hub.control("POST", "faults", {"throttle": throttle})
    answers = [_raw("GET", revision) for _ in range(3)]
    assert [(s, h.get("Retry-After")) for s, h, _ in answers] == [
        (429, "3"),
        (429, "7"),
        (200, None),
    ]
    assert answers[1][1]["RateLimit"].startswith('"api";r=0;t=7')


def test_main_moves_to_a_new_commit_and_old_commits_stay(hub: Hub, tmp_path: Path) -> None:
    from tests.standins.hf_hub_standin.fixture import derive_commit

    config = (hub.root / "files" / "config.json").read_bytes()
    changed = config.replace(b"62", b"63", 1)
    assert changed != config and len(changed) == len(config)
    new = derive_commit(hub.root, tmp_path / "next", {"config.json": changed})
    try:
        hub.control("POST", "commit", {"repo": REPO, "dir": str(tmp_path / "next")})
        info = json.loads(_urlopen(f"{hub.url}/api/models/{REPO}/revision/main")[2])
        assert info["sha"] == new["sha"] != hub.meta["sha"]
        assert _urlopen(_resolve_url(hub, "config.json"))[2] == changed
        assert _urlopen(_resolve_url(hub, "config.json", rev=hub.meta["sha"]))[2] == config
        tree = json.loads(_urlopen(f"{hub.url}/api/models/{REPO}/tree/main?limit=100")[2])
        oid = {e["path"]: e["oid"] for e in tree}["config.json"]
        assert oid == next(f["git_oid"] for f in new["files"] if f["path"] == "config.json")
    finally:
        hub.control("POST", "commit", {"repo": REPO, "dir": str(hub.root)})


def test_xet_switch_sends_the_xet_headers_and_a_read_token(hub: Hub) -> None:
    path = "model-00001-of-00020.safetensors"
    assert "X-Xet-Hash" not in _raw("HEAD", _resolve_url(hub, path))[1]
    hub.control("POST", "faults", {"xet": True})
    status, headers, _ = _raw("HEAD", _resolve_url(hub, path))
    assert status == 302 and len(headers["X-Xet-Hash"]) == 64
    link = headers["Link"]
    assert link.endswith('>; rel="xet-auth"') and "/xet-read-token/" in link
    status, headers, body = _raw("GET", link[1 : link.index(">")])
    assert status == 200 and headers["X-Xet-Cas-Url"] == json.loads(body)["casUrl"]
    assert int(headers["X-Xet-Token-Expiration"]) > time.time()
    cas = headers["X-Xet-Cas-Url"] + "/v1/reconstructions/" + headers["X-Xet-Access-Token"]
    assert _raw("GET", cas)[0] == 501  # no Xet CAS here: the read path is not served
