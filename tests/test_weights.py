"""Public weights by name (hieralab.weights): the catalog, downloads and the hub, with no network.

A loopback HTTP server (127.0.0.1, started here) stands in for the release hosts through ``HIERALAB_MIRROR``; a
Hugging Face cache made in a temporary folder stands in for the hub (read in offline mode). The files are small
models' weights in each source's layout; weights taken by name must give what the same file gives by path.
"""

import hashlib
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

import hieralab
from conftest import randomize_
from hieralab import weights
from hieralab.errors import CheckpointError
from hieralab.weights import catalog, commands, download

ROOT = Path(__file__).resolve().parents[1]
MINI = "hiera_mini_32"
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- a loopback server and a hub cache
class Server:
    """Serves ``routes[path] = (behaviour, body)``: ``ok`` (with Range), ``slow``, ``drop_once`` (the first answer
    stops half-way), ``truncate`` (every answer stops half-way), ``html``, ``redirect`` (body = the new path); other
    paths are 404; ``hub`` answers HEAD and GET as the Hugging Face hub's ``resolve`` endpoint does (a commit and the
    sha256 as ETag). ``requests`` records ``(path, Range header)``."""

    def __init__(self):
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.dropped: set[str] = set()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                kind, body = owner.routes.get(self.path, ("missing", b""))
                self.send_response(200 if kind == "hub" else 404)
                if kind == "hub":
                    self.send_header("X-Repo-Commit", "f" * 40)
                    self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("Content-Length", str(len(body) if kind == "hub" else 0))
                self.end_headers()

            def do_GET(self):
                owner.requests.append((self.path, self.headers.get("Range")))
                kind, body = owner.routes.get(self.path, ("missing", b""))
                if kind == "missing":
                    return self.send_error(404, "Not Found")
                if kind == "redirect":
                    self.send_response(302)
                    self.send_header("Location", body.decode())
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                start = 0
                m = re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if m and kind != "html":
                    start = int(m[1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                if kind == "hub":
                    self.send_header("X-Repo-Commit", "f" * 40)
                    self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("Content-Type", "text/html" if kind == "html" else "application/octet-stream")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if kind == "truncate" or (kind == "drop_once" and self.path not in owner.dropped):
                    owner.dropped.add(self.path)
                    self.wfile.write(payload[: len(payload) // 2])
                    return
                if kind == "slow":
                    step = max(1, len(payload) // 20)
                    for i in range(0, len(payload), step):
                        self.wfile.write(payload[i:i + step])
                        self.wfile.flush()
                        time.sleep(0.05)
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def gets(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path]


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch, server):
    monkeypatch.setenv("HIERALAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HIERALAB_MIRROR", server.base)
    for var in ("HIERALAB_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(download, "RETRY_WAIT_S", 0.0)
    server.routes.clear()
    server.requests.clear()


@pytest.fixture
def entry():
    """Register catalog entries for the test (removed afterwards): ``entry(tag, **fields)``."""
    added = []

    def add(tag, fmt="official", model=MINI, **fields):
        fields.setdefault("url", "" if "hub" in fields else f"https://weights.example.org/test/{model}.{tag}.bin")
        e = catalog.register(catalog.Weights(model, tag, fmt, "test data", "MIT", **fields))
        added.append(e.name)
        return e

    yield add
    for name in added:
        catalog.unregister(name)


def mini_model(seed=0, **kw):
    return randomize_(hieralab.create_model(MINI, **kw), seed).eval()


def official_bytes(model) -> bytes:
    buf = io.BytesIO()
    torch.save({"model_state": model.state_dict(), "epoch": 3}, buf)
    return buf.getvalue()


def timm_state(model) -> dict:
    """Our keys in timm's layout (``head.fc``, ``head.norm``), as timm's Hiera files have them."""
    out = {}
    for k, v in model.state_dict().items():
        k = re.sub(r"^head\.projection\.", "head.fc.", k)
        out[re.sub(r"^norm\.", "head.norm.", k)] = v.contiguous()
    return out


def serve(server, e, body: bytes, kind="ok") -> str:
    path = "/" + e.url.split("/", 3)[3]
    server.routes[path] = (kind, body)
    return path


def put_in_hub(repo: str, files: dict[str, bytes], commit: str = "c0ffee" * 6 + "0000") -> Path:
    """Files of a hub repo in the Hugging Face cache layout (blobs named by sha256, a snapshot of links, refs/main),
    as ``huggingface_hub`` leaves them after a download."""
    root = Path(os.environ["HF_HUB_CACHE"]) / f"models--{repo.replace('/', '--')}"
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return root


def same_outputs(a, b):
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(X), b.eval()(X), rtol=0, atol=0)


# ---------------------------------------------------------------- the catalog
def test_catalog_lists_every_source_with_one_default_per_model():
    entries = catalog.entries()
    hosts = {}
    for e in entries:
        host = e.url.split("/")[2] if e.url else e.hub.split("/")[0]
        hosts[host] = hosts.get(host, 0) + 1
        assert e.trained_on and e.license and e.format in catalog.FORMATS
    assert hosts == {"dl.fbaipublicfiles.com": 53, "timm": 27, "facebook": 12, "github.com": 10}
    registered = set(hieralab.list_models())
    for model in catalog.models():
        if model not in registered:  # a family another change registers (SAM 2 trunks)
            continue
        assert sum(e.default for e in catalog.tags(model)) == 1, model
    assert catalog.lookup("hiera_base_224").tag == "mae_in1k_ft_in1k"
    assert catalog.lookup("mae_hiera_base_16x224").tag == "mae_k400"


def test_official_urls_are_the_official_packages_and_timm_ids_are_timms():
    hiera = pytest.importorskip("hiera")
    timm = pytest.importorskip("timm")
    for e in catalog.entries():
        if e.url.startswith("https://dl.fbaipublicfiles.com/hiera/"):
            assert getattr(hiera, e.model).checkpoints[e.tag] == e.url, e.name
    official = {(name, tag) for name in dir(hiera) if re.match(r"(mae_)?hiera_\w+_(224|16x224)$", name)
                for tag in (getattr(hiera, name).checkpoints or {})}
    assert official <= {(e.model, e.tag) for e in catalog.entries()}  # every official file is in the catalog
    timm_names = {n for pattern in ("hiera_*", "sam2_*", "vit_*mae") for n in timm.list_pretrained(pattern)}
    ours = {e.hub.removeprefix("timm/") for e in catalog.entries() if e.hub.startswith("timm/")}
    assert ours <= timm_names and {n for n in timm_names if not n.startswith("hiera_base_abswin")} <= ours


def test_docs_table_is_the_catalog():
    table = catalog.catalog_markdown()
    doc = (ROOT / "docs" / "weights.md").read_text()
    assert table in doc, "docs/weights.md is out of date: paste hieralab.weights.catalog_markdown() into it"
    assert [ln for ln in doc.splitlines() if ln.startswith("| ")] == table.splitlines()


def test_names_and_tags(entry):
    entry("t_official", default=True)
    entry("t_other")
    assert catalog.find(f"{MINI}.t_other").tag == "t_other" and catalog.find(MINI).tag == "t_official"
    with pytest.raises(CheckpointError, match=r"^unknown tag 'nope' for hiera_mini_32; known tags: t_official "
                                              r"\(default\), t_other$"):
        hieralab.create_model(MINI, pretrained="nope")
    with pytest.raises(ValueError, match="two tags"):
        hieralab.create_model(f"{MINI}.t_other", pretrained="t_official")
    with pytest.raises(CheckpointError, match="vit_mini_patch4_32 has no published weights"):
        hieralab.create_model("vit_mini_patch4_32", pretrained=True)
    with pytest.raises(ValueError, match="not both"):
        hieralab.create_model(MINI, pretrained=True, checkpoint="x.pth")
    for not_a_name in ("runs/a/model.safetensors", "vit_mini_patch4_32", "nothing_here"):
        assert weights.resolve(not_a_name) is None
    with pytest.raises(CheckpointError, match="unknown tag"):
        weights.resolve(f"{MINI}.nope")


# ---------------------------------------------------------------- by name == by path, in each layout
def test_official_file_by_name_gives_what_it_gives_by_path(server, entry, tmp_path):
    src = mini_model()
    e = entry("t_official", default=True)
    path = serve(server, e, official_bytes(src))
    by_name = hieralab.create_model(f"{MINI}.t_official", pretrained=True)
    local = weights.resolve(e.name)
    assert local == download.url_cache_path(e.url) and local.is_relative_to(tmp_path / "cache")
    assert (tmp_path / "cache" / "downloads" / "weights.example.org" / "test").is_dir()  # the original host
    same_outputs(by_name, hieralab.create_model(MINI, checkpoint=local))
    same_outputs(by_name, src)
    same_outputs(hieralab.create_model(MINI, pretrained=True), src)  # the default tag
    same_outputs(hieralab.create_model(MINI, pretrained="t_official"), src)
    assert len(server.gets(path)) == 1  # downloaded once, then the cache


def test_model_args_of_an_entry_are_defaults_under_the_callers(server, entry):
    src = mini_model(num_classes=7)
    e = entry("t_seven", model_args={"num_classes": 7})
    serve(server, e, official_bytes(src))
    same_outputs(hieralab.create_model(e.name, pretrained=True), src)
    assert hieralab.create_model(e.name, pretrained=True, num_classes=3).num_classes == 3  # a new head
    assert hieralab.create_model(e.name).num_classes == 7  # a tag without pretrained: the architecture only


def test_timm_safetensors_from_the_hub_cache_offline(entry, monkeypatch):
    src = mini_model()
    e = entry("t_timm", "timm", hub="tester/mini-timm")
    put_in_hub("tester/mini-timm", {"model.safetensors": save(timm_state(src))})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    by_name = hieralab.create_model(e.name, pretrained=True)
    same_outputs(by_name, src)
    same_outputs(by_name, hieralab.create_model(MINI, checkpoint=weights.resolve(e.name)))
    assert download.cached(e) is not None


def test_hub_repos_in_our_timm_and_transformers_layouts(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    src = mini_model()
    src.save_pretrained(tmp_path / "ours")
    put_in_hub("tester/ours", {p.name: p.read_bytes() for p in (tmp_path / "ours").iterdir()})
    put_in_hub("tester/timm", {"model.safetensors": save(timm_state(src)),
                               "config.json": b'{"architecture": "hiera_mini_32", "num_classes": 10}'})
    cfg = transformers.HieraConfig(
        embed_dim=64, num_heads=[2, 4, 8], depths=[1, 2, 2], image_size=[32, 32], patch_size=[3, 3],
        patch_stride=[2, 2], patch_padding=[1, 1], masked_unit_size=[4, 4], masked_unit_attention=[True, True, False],
        num_query_pool=2, num_labels=10, stage_names=["stem", "stage1", "stage2", "stage3"], out_features=["stage3"])
    hf = randomize_(transformers.HieraForImageClassification(cfg)).eval()
    hf.save_pretrained(tmp_path / "hf_model")
    put_in_hub("tester/hf", {p.name: p.read_bytes() for p in (tmp_path / "hf_model").iterdir()})
    monkeypatch.setenv("HIERALAB_OFFLINE", "1")
    same_outputs(hieralab.from_pretrained("hf-hub:tester/ours"), src)
    same_outputs(hieralab.Hiera.from_pretrained("hf-hub:tester/timm"), src)
    ours = hieralab.from_pretrained("hf-hub:tester/hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(X), hf(X).logits, atol=1e-5, rtol=0)
    assert weights.resolve("hf-hub:tester/ours").joinpath("config.json").exists()  # our folder
    assert weights.resolve("hf-hub:tester/timm").name == "model.safetensors"  # their weights file
    with pytest.raises(CheckpointError, match=r"tester/none/config.json is not in the Hugging Face cache .*"
                                              "HIERALAB_OFFLINE"):
        hieralab.from_pretrained("hf-hub:tester/none")


def test_hub_files_come_through_the_mirror_into_the_hub_cache(server, entry, tmp_path):
    src = mini_model()
    e = entry("t_hub_mirror", "timm", hub="tester/mirror")
    server.routes["/tester/mirror/resolve/main/model.safetensors"] = ("hub", save(timm_state(src)))
    same_outputs(hieralab.create_model(e.name, pretrained=True), src)
    path = weights.resolve(e.name)
    assert path.is_relative_to(tmp_path / "hf") and path.resolve().parent.name == "blobs"  # the hub's cache
    assert not (tmp_path / "cache" / "downloads").exists()  # and no second copy


def test_a_changed_hub_blob_is_refused(entry, monkeypatch):
    e = entry("t_timm", "timm", hub="tester/mini-timm")
    root = put_in_hub("tester/mini-timm", {"model.safetensors": save(timm_state(mini_model()))})
    monkeypatch.setenv("HIERALAB_OFFLINE", "1")
    blob = next((root / "blobs").iterdir())
    data = blob.read_bytes()
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CheckpointError, match=r"no longer matches the hub's sha256 .*hieralab weights download "
                                              r"hiera_mini_32.t_timm$"):
        weights.fetch(e)


# ---------------------------------------------------------------- what goes wrong on the way
def test_404_html_truncated_and_no_network_are_one_line_each(server, entry, monkeypatch):
    body = official_bytes(mini_model())
    e404 = entry("t_404")
    with pytest.raises(CheckpointError, match=r"^hiera_mini_32.t_404: http://127.0.0.1:\d+/test/\S+ answered HTTP "
                                              r"404 Not Found: the file is not there"):
        weights.fetch(e404)
    e_html = entry("t_html")
    serve(server, e_html, b"<!DOCTYPE html><html><body>Sign in</body></html>", "html")
    with pytest.raises(CheckpointError, match="sent an HTML page, not weights"):
        weights.fetch(e_html)
    e_cut = entry("t_cut")
    serve(server, e_cut, body, "truncate")
    with pytest.raises(CheckpointError, match=r"stopped at .* of .* \(the connection dropped\) \(3 tries\); the part "
                                              r"is kept .*run `hieralab weights download hiera_mini_32.t_cut` again"):
        weights.fetch(e_cut)
    for e in (e404, e_html, e_cut):
        assert not download.url_cache_path(e.url).exists()  # nothing under the final name
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # a port nobody listens on once the socket is closed
    monkeypatch.setenv("HIERALAB_MIRROR", f"http://127.0.0.1:{closed}")
    with pytest.raises(CheckpointError, match=r"cannot reach 127.0.0.1:\d+ \(.*\): no network\?"):
        weights.fetch(entry("t_net"))
    assert issubclass(CheckpointError, ValueError)  # what a library caller catches


def test_a_wrong_architecture_names_the_weights(server, entry):
    e = entry("t_vit")
    serve(server, e, official_bytes(hieralab.create_model("vit_micro_patch4_32")))
    with pytest.raises(CheckpointError, match=r"^hiera_mini_32.t_vit \(.*\): checkpoint does not fit this model"):
        hieralab.create_model(e.name, pretrained=True)


def test_a_redirect_is_followed(server, entry):
    src = mini_model()
    e = entry("t_moved")
    serve(server, e, b"/elsewhere/weights.pth", "redirect")
    server.routes["/elsewhere/weights.pth"] = ("ok", official_bytes(src))
    same_outputs(hieralab.create_model(e.name, pretrained=True), src)


def test_a_dropped_connection_resumes_with_range(server, entry):
    body = official_bytes(mini_model())
    e = entry("t_drop")
    path = serve(server, e, body, "drop_once")
    assert weights.fetch(e).read_bytes() == body
    assert server.gets(path) == [None, f"bytes={len(body) // 2}-"]


def test_a_partial_file_left_by_a_killed_download_is_resumed(server, entry):
    body = official_bytes(mini_model())
    e = entry("t_part")
    path = serve(server, e, body)
    dest = download.url_cache_path(e.url)
    dest.parent.mkdir(parents=True)
    (dest.parent / f".{dest.name}.part").write_bytes(body[:1000])
    assert weights.fetch(e).read_bytes() == body
    assert server.gets(path) == ["bytes=1000-"]
    assert not (dest.parent / f".{dest.name}.part").exists()


def test_two_processes_download_once(server, tmp_path):
    body = official_bytes(mini_model())
    server.routes["/both/w.pth"] = ("slow", body)
    go = tmp_path / "go"
    script = (
        "import sys, time, pathlib\n"
        "from hieralab.weights import download\n"
        "pathlib.Path(sys.argv[2]).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.01)\n"
        f"print(download.download_url({server.base + '/both/w.pth'!r}, {str(tmp_path / 'dl' / 'w.pth')!r}, "
        "name='both'))\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, "x", str(tmp_path / f"ready{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.time() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.time() < deadline:
        time.sleep(0.02)
    go.touch()  # both start at once; the transfer takes about a second
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert {o.strip() for o, _ in outs} == {str(tmp_path / "dl" / "w.pth")}
    assert len(server.gets("/both/w.pth")) == 1
    assert (tmp_path / "dl" / "w.pth").read_bytes() == body


def test_sha256_published_recorded_and_changed(server, entry):
    body = official_bytes(mini_model())
    bad = entry("t_badsha", sha256="0" * 64)
    serve(server, bad, body)
    with pytest.raises(CheckpointError, match="does not match its published sha256"):
        weights.fetch(bad)
    assert not download.url_cache_path(bad.url).exists()
    good = entry("t_sha", sha256=hashlib.sha256(body).hexdigest())
    serve(server, good, body)
    assert weights.fetch(good).read_bytes() == body
    plain = entry("t_plain")
    serve(server, plain, body)
    path = weights.fetch(plain)
    assert path.with_name(path.name + ".sha256").read_text().split()[0] == hashlib.sha256(body).hexdigest()
    path.write_bytes(body[:-1] + bytes([body[-1] ^ 1]))  # a changed cache
    with pytest.raises(CheckpointError, match=r"no longer matches its sha256 .*the one recorded at its download.*; "
                                              r"delete it and fetch it again: hieralab weights download "
                                              r"hiera_mini_32.t_plain$"):
        hieralab.create_model(plain.name, pretrained=True)


def test_offline_uses_the_cache_and_names_what_is_missing(server, entry, monkeypatch):
    src = mini_model()
    e = entry("t_off")
    path = serve(server, e, official_bytes(src))
    weights.fetch(e)
    monkeypatch.setenv("HIERALAB_OFFLINE", "1")
    same_outputs(hieralab.create_model(e.name, pretrained=True), src)
    assert len(server.gets(path)) == 1
    missing = entry("t_missing")
    serve(server, missing, official_bytes(src))
    with pytest.raises(CheckpointError, match=r"hiera_mini_32.t_missing is not in the cache \(.*\) and downloads are "
                                              r"off .*hieralab weights download hiera_mini_32.t_missing"):
        weights.fetch(missing)
    assert server.gets("/" + missing.url.split("/", 3)[3]) == []


def test_the_mirror_replaces_scheme_and_host(monkeypatch):
    url = "https://dl.fbaipublicfiles.com/hiera/hiera_base_224.pth"
    monkeypatch.setenv("HIERALAB_MIRROR", "http://127.0.0.1:9/copies/")
    assert download.mirrored(url) == "http://127.0.0.1:9/copies/hiera/hiera_base_224.pth"
    monkeypatch.delenv("HIERALAB_MIRROR")
    assert download.mirrored(url) == url
    assert download.url_cache_path(url).parts[-3:] == ("dl.fbaipublicfiles.com", "hiera", "hiera_base_224.pth")


# ---------------------------------------------------------------- the command line's functions and torch.hub
def test_list_and_download_commands(server, entry, capsys):
    e = entry("t_cmd")
    serve(server, e, official_bytes(mini_model()))
    assert commands.list_command("t_cmd") == 0
    assert re.search(r"hiera_mini_32.t_cmd +https://weights.example.org/\S+ +\? +-", capsys.readouterr().out)
    assert commands.download_command(e.name) == 0
    assert capsys.readouterr().out.strip() == str(download.url_cache_path(e.url))
    commands.list_command("t_cmd")
    assert re.search(r"hiera_mini_32.t_cmd .* \d+\.\d [KMG]B +cached", capsys.readouterr().out)
    assert commands.list_command("no_such_weights") == 1
    with pytest.raises(CheckpointError, match="not a catalog name"):
        commands.download_command("nothing_here")


def test_torch_hub_load_from_this_folder_through_the_mirror(server):
    src = randomize_(hieralab.create_model("hiera_base_224", stages=(1, 1, 1, 1))).eval()
    server.routes["/hiera/hiera_base_224.pth"] = ("ok", official_bytes(src))  # the real catalog URL, mirrored
    model = torch.hub.load(str(ROOT), "hiera_base_224", pretrained=True, source="local", stages=(1, 1, 1, 1))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), src(x), rtol=0, atol=0)
