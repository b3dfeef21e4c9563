"""vistok serve: the JSON API through FastAPI's TestClient, the command line, and the page itself driven end to end
in headless Chromium against a real server on localhost.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them). Without them
it is skipped locally, and fails under CI (the ``CI`` environment variable set), so CI cannot skip it silently.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
from PIL import Image

import vistok
from vistok.budget import list_models
from vistok.reducers.core import keep_count
from vistok.samples import sample_images

try:
    from fastapi.testclient import TestClient
except ImportError:
    if os.environ.get("CI"):  # make test installs the serve extra; under CI its absence is a failure
        raise
    pytest.skip("vistok serve needs the serve extra: pip install 'vistok[serve]'", allow_module_level=True)

from vistok.serve import DEFAULT_MODELS, ServeError, background, bind, create_app  # noqa: E402

SAMPLE = next(p for p in sample_images() if p.name == "chelsea.jpg")  # 451x300
MODELS = ["llava-1.5-7b", "qwen2-vl-7b-instruct", "claude-sonnet-4.5"]  # the last is hosted: no KV cache shape


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


def post(client: TestClient, path: Path | bytes = SAMPLE, **form: str):
    data = path.read_bytes() if isinstance(path, Path) else path
    return client.post("/api/tokenize", files={"image": ("upload.jpg", data)}, data=form)


def png_bytes(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# The JSON API


def test_options_list_what_the_registries_hold(client: TestClient) -> None:
    body = client.get("/api/options").json()
    tokenizers = {t["name"]: t for t in body["tokenizers"]}
    assert {"grid", "patch", "focus-vit-s14", "regions:faces", "regions:superpixels"} <= set(tokenizers)
    assert "regions" not in tokenizers  # offered per detector
    assert (tokenizers["grid"]["kind"], tokenizers["grid"]["decodes"]) == ("hard", True)
    assert (tokenizers["focus-vit-s14"]["kind"], tokenizers["focus-vit-s14"]["decodes"]) == ("soft", False)
    reducers = {r["name"]: r for r in body["reducers"]}
    assert set(reducers) == set(vistok.reduce_methods())
    assert reducers["tome"]["soft_only"] and not reducers["stride"]["soft_only"]
    assert reducers["visionzip"]["needs"] == ["cls_attention"]
    assert body["models"] == list_models()
    assert body["default_models"] == list(DEFAULT_MODELS) and set(DEFAULT_MODELS) <= set(body["models"])
    assert body["limits"] == {"max_upload_bytes": 32 * 1024 * 1024, "max_pixels": 128_000_000}
    small = TestClient(create_app(max_upload_bytes=1000, max_pixels=5000)).get("/api/options").json()
    assert small["limits"] == {"max_upload_bytes": 1000, "max_pixels": 5000}


def test_grid_tokens_equal_the_python_encode_and_tile_the_image(client: TestClient) -> None:
    response = post(client, tokenizer="grid")
    assert response.status_code == 200, response.text
    body = response.json()
    expected = vistok.load("grid").encode(SAMPLE)
    assert body["image"] == {"width": 451, "height": 300}
    assert body["count"] == {"tokens": len(expected), "before_reduction": len(expected)} and len(expected) == 176
    assert body["grid"] == list(expected.grid) == [11, 16]
    assert [t["id"] for t in body["tokens"]] == expected.values.tolist()
    assert [t["index"] for t in body["tokens"]] == list(range(176))
    # one cell each; together they cover the image exactly once
    cells = [t["cells"] for t in body["tokens"]]
    assert all(len(c) == 1 for c in cells)
    boxes = [c[0] for c in cells]
    assert sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) == pytest.approx(451 * 300, rel=1e-4)
    assert (min(b[0] for b in boxes), min(b[1] for b in boxes)) == (0, 0)
    assert (max(b[2] for b in boxes), max(b[3] for b in boxes)) == (451, 300)
    cols = [round(x, 2) for x in sorted({b[0] for b in boxes})]
    assert len(cols) == 16 and cols[1] == pytest.approx(451 / 16, abs=0.01)
    # token 17 is row 1, column 1: its patch, its group (itself) and its cell
    token = body["tokens"][17]
    assert token["patch"] == [1, 1] and token["group"] == [[1, 1]]
    assert token["cells"][0] == pytest.approx([451 / 16, 300 / 11, 2 * 451 / 16, 2 * 300 / 11], abs=0.01)
    assert all(re.fullmatch(r"#[0-9a-f]{6}", t["color"]) for t in body["tokens"])
    same_id = [t["color"] for t in body["tokens"] if t["id"] == body["tokens"][0]["id"]]
    assert len(set(same_id)) == 1  # a colour per id
    assert body["preview"].startswith("data:image/jpeg;base64,")


def test_soft_tokens_carry_their_norm(client: TestClient) -> None:
    body = post(client, tokenizer="patch").json()
    expected = vistok.load("patch").encode(SAMPLE)
    norms = [t["norm"] for t in body["tokens"]]
    assert norms == pytest.approx([float((v.astype("float64") ** 2).sum() ** 0.5) for v in expected.values], abs=1e-3)
    assert all("id" not in t for t in body["tokens"])
    assert body["tokenizer"] == {"name": "patch", "kind": "soft", "decodes": True}


def test_a_reducer_gives_the_expected_count_and_groups(client: TestClient) -> None:
    body = post(client, tokenizer="grid", reducer="stride", amount="0.25").json()
    assert body["count"] == {"tokens": keep_count(176, None, 0.25), "before_reduction": 176} == {
        "tokens": 44, "before_reduction": 176}
    assert len(body["tokens"]) == 44 and body["layout"]["dropped_patches"] == 132
    assert body["reduction"] == {"method": "stride", "amount": "0.25", "options": {"ratio": 0.25}, "from": 176,
                                 "to": 44}
    # a merging reducer on vectors, with a count: the groups are the reduced tokens' source map
    body = post(client, tokenizer="patch", reducer="tome", amount="50").json()
    expected = vistok.reduce(vistok.load("patch").encode(SAMPLE), "tome", keep=50)
    assert body["count"]["tokens"] == 50
    assert [len(t["group"]) for t in body["tokens"]] == expected.sizes.tolist()
    assert sum(len(t["cells"]) for t in body["tokens"]) == 176  # tome merges, it drops nothing
    for t in body["tokens"]:
        patches = [r * 16 + c for r, c in t["group"]]
        assert (expected.source[patches] == t["index"]).all()
    # "1/8" is a ratio, as in --reduce METHOD:AMOUNT
    assert post(client, tokenizer="grid", reducer="stride", amount="1/8").json()["count"]["tokens"] == 22


def test_model_counts_and_costs_equal_vistok_count(client: TestClient) -> None:
    body = post(client, tokenizer="grid", models=",".join(MODELS), reducer="random", amount="0.25").json()
    assert [m["model"] for m in body["models"]] == MODELS
    for row in body["models"]:
        counted = vistok.count(SAMPLE, model=row["model"])
        assert (row["image_tokens"], row["total_positions"]) == (counted.image_tokens, counted.total_positions)
        k = keep_count(counted.image_tokens, None, 0.25)
        assert row["reduced"]["image_tokens"] == k
        assert row["reduced"]["total_positions"] == counted.total_positions - counted.image_tokens + k
        if row["model"] == "claude-sonnet-4.5":
            assert row["lm"] is None and row["kv_cache_bytes"] is None and row["reduced"]["kv_cache_bytes"] is None
        else:
            assert row["kv_cache_bytes"] == vistok.cost(counted).kv_cache_bytes > 0
            assert row["reduced"]["kv_cache_bytes"] == vistok.cost(
                row["reduced"]["total_positions"], lm=row["lm"]).kv_cache_bytes
    llava = body["models"][0]
    assert (llava["image_tokens"], llava["reduced"]["image_tokens"]) == (576, 144)
    # without a reducer there is no reduced count; aliases resolve to the model's name
    plain = post(client, tokenizer="grid", models="llava-hf/llava-1.5-7b-hf").json()["models"]
    assert [(m["model"], m["image_tokens"], m["reduced"]) for m in plain] == [("llava-1.5-7b", 576, None)]


def test_a_model_that_refuses_the_image_says_so_in_its_row(client: TestClient) -> None:
    rows = post(client, png_bytes((6100, 30)), tokenizer="grid", models="qwen2-vl-7b-instruct,llava-1.5-7b").json()
    qwen, llava = rows["models"]
    assert qwen["model"] == "qwen2-vl-7b-instruct" and qwen["image_tokens"] is None
    assert "exceeds 200:1" in qwen["error"]
    assert llava["image_tokens"] == vistok.count((6100, 30), model="llava-1.5-7b").image_tokens and llava["error"] is None


@pytest.mark.slow
def test_an_encoder_with_attention_signals_feeds_a_reducer_that_needs_them(client: TestClient) -> None:
    body = post(client, tokenizer="focus-vit-s14", reducer="visionzip", amount="64", models="llava-1.5-7b").json()
    tokens = vistok.load("focus-vit-s14").encode(SAMPLE)
    expected = vistok.reduce(tokens, "visionzip", keep=64)
    assert body["count"] == {"tokens": 64, "before_reduction": len(tokens)}
    assert body["tokenizer"] == {"name": "focus-vit-s14", "kind": "soft", "decodes": False} and body["decoded"] is None
    assert [len(t["group"]) for t in body["tokens"]] == expected.sizes.tolist()
    assert body["layout"]["dropped_patches"] == int((expected.source < 0).sum())
    norms = [float((v.astype("float64") ** 2).sum() ** 0.5) for v in expected.values]
    assert [t["norm"] for t in body["tokens"]] == pytest.approx(norms, rel=1e-3)
    assert body["models"][0]["reduced"]["image_tokens"] == 64


def test_decoded_image_where_the_tokenizer_decodes(client: TestClient) -> None:
    body = post(client, tokenizer="grid").json()
    assert body["decoded"].startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(body["decoded"].split(",", 1)[1])))
    expected = vistok.load("grid")
    assert decoded.size == expected.decode(expected.encode(SAMPLE)).size == (256, 176)
    regions = post(client, tokenizer="regions:superpixels").json()
    assert regions["decoded"] is None and regions["tokenizer"]["decodes"] is False
    # region tokens are drawn as their boxes, with no patch or group
    found = vistok.load("regions:superpixels").encode(SAMPLE)
    assert regions["count"]["tokens"] == len(found) > 0 and regions["layout"] == {"kind": "boxes"}
    boxes = [v for t in regions["tokens"] for v in t["box"]]
    assert boxes == pytest.approx(found.boxes.reshape(-1).tolist(), abs=0.01)
    assert all(t["patch"] is None and t["group"] is None for t in regions["tokens"])


@pytest.mark.parametrize("form, status, words", [
    ({"tokenizer": "gird"}, 400, ["unknown tokenizer 'gird'", "did you mean 'grid'", "patch", "focus-vit-s14"]),
    ({"tokenizer": "grid", "reducer": "tome", "amount": "0.5"}, 400, ["hard ids", "stride"]),
    # a path is not a name: the server opens no file of its own on a request's word
    ({"tokenizer": str(Path(vistok.__file__).parent / "weights" / "fsq-natural64.safetensors")}, 400,
     ["unknown tokenizer", "grid"]),
    ({"tokenizer": "regions:../../etc"}, 400, ["unknown detector"]),
    ({"tokenizer": "grid", "reducer": "cls-attention", "amount": "16"}, 400, ["'cls_attention' signal"]),
    ({"tokenizer": "grid", "reducer": "stride"}, 400, ["needs an amount"]),
    ({"tokenizer": "grid", "reducer": "stride", "amount": "lots"}, 400, ["'lots'", "ratio"]),
    ({"tokenizer": "grid", "reducer": "stride", "amount": "999"}, 400, ["keep must be", "1..176"]),
    ({"tokenizer": "grid", "reducer": "shrink", "amount": "0.5"}, 400, ["unknown reduction method 'shrink'"]),
    ({"tokenizer": "grid", "models": "llava-7"}, 400, ["unknown model 'llava-7'", "/api/options"]),
])
def test_bad_requests_say_what_is_wrong(client: TestClient, form: dict, status: int, words: list[str]) -> None:
    response = post(client, **form)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in detail


def test_bad_uploads(client: TestClient, tmp_path: Path) -> None:
    text = post(client, b"these are words, not pixels", tokenizer="grid")
    assert text.status_code == 400 and "not an image vistok can read" in text.json()["detail"]
    broken = post(client, SAMPLE.read_bytes()[:2000], tokenizer="grid")
    assert broken.status_code == 400 and "not an image" in broken.json()["detail"]
    empty = post(client, b"", tokenizer="grid")
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    missing = client.post("/api/tokenize", data={"tokenizer": "grid"})
    assert missing.status_code == 400 and "'image'" in missing.json()["detail"]
    raw = client.post("/api/tokenize", content=SAMPLE.read_bytes(), headers={"content-type": "image/jpeg"})
    assert raw.status_code == 400 and "multipart/form-data" in raw.json()["detail"]


def test_upload_and_pixel_limits() -> None:
    small = TestClient(create_app(max_upload_bytes=10_000, max_pixels=100_000))
    # a declared length over the limit: refused before the body is read
    over = post(small, SAMPLE, tokenizer="grid")  # 38 kB
    assert over.status_code == 413 and "10,000 bytes" in over.json()["detail"] and "--max-upload-mb" in \
        over.json()["detail"]
    # no declared length (chunked): refused on the bytes read
    body = b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n" + \
        SAMPLE.read_bytes() * 3 + b"\r\n--b--\r\n"
    chunked = small.post("/api/tokenize", content=iter([body[i:i + 4096] for i in range(0, len(body), 4096)]),
                         headers={"content-type": "multipart/form-data; boundary=b"})
    assert chunked.status_code == 413
    # the file itself over the limit, within the form's allowance for headers
    tight = TestClient(create_app(max_upload_bytes=30_000))
    assert post(tight, SAMPLE, tokenizer="grid").status_code == 413
    # decoded pixels: 451 x 300 = 135,300 > 100,000
    pixels = post(small, png_bytes((451, 300)), tokenizer="grid")
    assert pixels.status_code == 400
    assert "135,300 pixels" in pixels.json()["detail"] and "--max-pixels" in pixels.json()["detail"]
    assert post(small, png_bytes((300, 300)), tokenizer="grid").status_code == 200
    with pytest.raises(ValueError, match="max_upload_bytes"):
        create_app(max_upload_bytes=0)


def test_the_page_is_one_offline_file(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(\s*["']?(https?:)?//""", html, re.I)
    for element in ('id="file"', 'id="tokenizer"', 'id="reducer"', 'id="amount"', 'id="models"', 'id="overlay"',
                    'id="costs"', 'id="decoded"', 'id="status"'):
        assert element in html
    # no CDN-served API explorer
    assert client.get("/docs").status_code == 404 and client.get("/api/openapi.json").status_code == 200


# --------------------------------------------------------------------------------------------------
# The command and the server


def test_serve_help_and_a_taken_port() -> None:
    from typer.testing import CliRunner

    from vistok.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--host", "--port", "--max-upload-mb", "--max-pixels", "--open", "--no-open", "127.0.0.1"):
        assert option in result.output
    taken = bind("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match="pick another --port"):
            bind("127.0.0.1", port)
        result = CliRunner().invoke(app, ["serve", "--port", str(port)])
        assert result.exit_code == 1 and "pick another --port" in result.output
    finally:
        taken.close()


@pytest.fixture(scope="module")
def server():
    """A real vistok serve on 127.0.0.1 (a free port) in a background thread, for the module; its page's URL."""
    with background("127.0.0.1", 0, timeout=30) as url:
        yield url


def test_the_server_answers_over_tcp(server: str) -> None:
    with socket.create_connection(("127.0.0.1", int(server.rsplit(":", 1)[1].strip("/"))), timeout=5) as conn:
        conn.sendall(b"GET /api/options HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and b'"default_models"' in reply


def test_background_serves_until_the_block_ends() -> None:
    import json
    import urllib.request

    with background(max_upload_bytes=5000) as url:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        with urllib.request.urlopen(url + "api/options", timeout=10) as reply:
            assert json.load(reply)["limits"]["max_upload_bytes"] == 5000
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def _browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        message = ("the vistok serve page test needs Chromium and its WebDriver (Debian: apt-get install chromium "
                   "chromium-driver; make test installs them)")
        if os.environ.get("CI"):
            pytest.fail(f"{message}; under CI this test must run, not skip", pytrace=False)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, to check for errors
    browser = webdriver.Chrome(options=options, service=Service(driver))
    browser.set_page_load_timeout(30)
    browser.set_script_timeout(30)
    return browser


@pytest.fixture(scope="module")
def browser():
    instance = _browser()
    yield instance
    instance.quit()


def _wait_for(browser, state: str, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    def settled(driver):
        now = driver.find_element("tag name", "body").get_attribute("data-state")
        return now if now in (state, "error") else False

    reached = WebDriverWait(browser, timeout).until(settled)
    status = browser.find_element("id", "status").text
    return reached, status


def test_the_page_draws_the_tokens_and_counts_of_an_upload(server: str, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(server)
    assert _wait_for(browser, "ready")[0] == "ready"
    Select(browser.find_element(By.ID, "tokenizer")).select_by_value("grid")
    models = Select(browser.find_element(By.ID, "models"))
    assert sorted(o.get_attribute("value") for o in models.all_selected_options) == sorted(DEFAULT_MODELS)
    models.deselect_all()
    for model in ("llava-1.5-7b", "qwen2-vl-7b-instruct"):
        models.select_by_value(model)
    browser.find_element(By.ID, "file").send_keys(str(SAMPLE))
    state, status = _wait_for(browser, "done")
    assert state == "done", status

    expected = len(vistok.load("grid").encode(SAMPLE))
    overlay = browser.find_element(By.ID, "overlay")
    assert int(overlay.get_attribute("data-tokens")) == expected == 176
    assert len(browser.find_elements(By.CSS_SELECTOR, "#overlay .token")) == expected
    assert browser.find_element(By.ID, "token-count").text == str(expected)
    for model in ("llava-1.5-7b", "qwen2-vl-7b-instruct"):
        row = browser.find_element(By.CSS_SELECTOR, f'tr[data-model="{model}"]')
        counted = vistok.count(SAMPLE, model=model)
        assert int(row.find_element(By.CLASS_NAME, "image-tokens").text) == counted.image_tokens
        mib = vistok.cost(counted).kv_cache_bytes / 2**20
        assert row.find_element(By.CLASS_NAME, "kv").text == f"{mib:.1f} MiB"
    assert browser.find_element(By.ID, "decoded-box").is_displayed()
    assert browser.find_element(By.ID, "decoded").get_attribute("src").startswith("data:image/png;base64,")

    # hovering a token shows its id, its patch and its group
    token = browser.find_elements(By.CSS_SELECTOR, "#overlay .token")[17]
    ActionChains(browser).move_to_element(token).perform()
    tip = browser.find_element(By.ID, "tip")
    WebDriverWait(browser, 10).until(lambda _: tip.is_displayed())
    first_id = vistok.load("grid").encode(SAMPLE).values[17]
    assert tip.text.splitlines() == [f"token 17: id {first_id}", "patch: row 1, column 1",
                                     "group: its own patch only"]

    # a reducer and an amount: fewer tokens drawn, the reduced counts in the table
    amount = browser.find_element(By.ID, "amount")
    amount.clear()
    amount.send_keys("0.25")
    Select(browser.find_element(By.ID, "reducer")).select_by_value("stride")
    WebDriverWait(browser, 60).until(lambda _: overlay.get_attribute("data-tokens") == "44")
    state, status = _wait_for(browser, "done")
    assert state == "done", status
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-model="llava-1.5-7b"]')
    assert row.find_element(By.CLASS_NAME, "reduced-tokens").text == "144 (stride)"

    # an image pasted from the clipboard (Ctrl+V) is tokenized too
    Select(browser.find_element(By.ID, "reducer")).select_by_value("")
    browser.execute_script("""
        const canvas = document.createElement("canvas");
        canvas.width = 64; canvas.height = 48;
        canvas.getContext("2d").fillRect(0, 0, 20, 20);
        canvas.toBlob((blob) => {
          const data = new DataTransfer();
          data.items.add(new File([blob], "pasted.png", { type: "image/png" }));
          document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data }));
        }, "image/png");""")
    pasted = vistok.load("grid").count(64, 48)
    WebDriverWait(browser, 60).until(lambda _: overlay.get_attribute("data-tokens") == str(pasted))

    # no script error or failed request so far
    assert [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []

    # a file that is not an image: the status line says so
    bad = tmp_path / "notes.png"
    bad.write_text("these are words, not pixels")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    state, status = _wait_for(browser, "error")
    assert state == "error" and "Error 400" in status and "not an image vistok can read" in status
