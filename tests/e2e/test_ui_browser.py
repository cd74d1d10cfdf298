"""The /ui pages in headless Chromium against a real server with a real model (OSNet-x0.25, torchreid's
Market-1501 weights from ../shared/data) and an API key: real CUHK03 crops registered through the page, another
crop of each person queried, the first ranked crop shows that person; API errors shown on the page; the key never
in a URL; nothing leaves 127.0.0.1; driven with the keyboard where a person would; readable at 1280x800.

Screenshots go to the test's tmp folder (REID_TEST_SCREENSHOTS=<folder> keeps a copy there). The screenshot in
the docs shows synthetic players only (CUHK03 is research-use data and is never published):

    REID_UPDATE_DOCS_SCREENSHOT=1 pytest tests/e2e/test_ui_browser.py -k docs_screenshot
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image

from model import save_checkpoint
from tests.support.browser import OfflinePage
from tests.support.live_server import REPO_ROOT, LiveServer, server_env

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]

KEY = "ui-test-key-with-some-entropy-7"
PEOPLE = 6
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "images" / "ui-query.png"


@pytest.fixture(scope="module")
def osnet_checkpoint(osnet_x0_25_market_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torchreid_import = pytest.importorskip("model.torchreid_import")
    model = torchreid_import.load_torchreid_checkpoint(osnet_x0_25_market_weights, arch="osnet_x0_25")
    checkpoint = tmp_path_factory.mktemp("ui-model") / "osnet_x0_25_market.safetensors"
    save_checkpoint(model, checkpoint, train_meta={"source": "torchreid model zoo, Market-1501"})
    return checkpoint


@pytest.fixture(scope="module")
def ui_server(osnet_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The real model behind an API key; its first start exports the ONNX graph (slow on a busy CPU)."""
    tmp = tmp_path_factory.mktemp("ui-server")
    env = server_env(osnet_checkpoint, tmp / "data", REID_API_KEY=KEY, REID_TORCH_THREADS="2")
    with LiveServer(env, log_path=tmp / "server.log", ready_timeout_s=600) as server:
        yield server


@pytest.fixture()
def ui_page(browser: Any) -> Iterator[OfflinePage]:
    """A 1280x800 page (the size the pages must be readable at) that cannot leave 127.0.0.1."""
    page = OfflinePage(browser, viewport={"width": 1280, "height": 800})
    yield page
    page.close()


def screenshot(page: Any, folder: Path, name: str, full_page: bool = False) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    keep = os.environ.get("REID_TEST_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


def press_tab_until(page: Any, predicate: str, limit: int = 40) -> None:
    """Tab through the page until ``predicate`` (JS, on document.activeElement as ``el``) holds."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(f"(() => {{ const el = document.activeElement; return !!({predicate}); }})()"):
            return
    raise AssertionError(f"not reachable with Tab: {predicate}")


def enter_key(page: Any, key: str) -> None:
    page.locator("#key-input").fill(key)
    page.keyboard.press("Enter")


def drop_files(page: Any, selector: str, files: list[Path]) -> None:
    """Drop ``files`` on ``selector`` as a person dragging them from a file manager would (a drop event whose
    DataTransfer holds the files)."""
    payload = [{"name": f.name, "b64": base64.b64encode(f.read_bytes()).decode()} for f in files]
    transfer = page.evaluate_handle(
        """files => {
            const transfer = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
                transfer.items.add(new File([bytes], f.name, { type: "image/png" }));
            }
            return transfer;
        }""",
        payload,
    )
    page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def register_through_page(
    page: Any, collection: str, files: list[Path], labels: list[str], by_drop: bool = False
) -> None:
    page.goto(page.url.split("#")[0] + "#/register")
    page.locator("#register-collection").fill(collection)
    if by_drop:
        drop_files(page, "#register-drop", files)
        page.locator("[data-testid=register-preview]").nth(len(files) - 1).wait_for()
    else:
        page.locator("#register-files").set_input_files([str(f) for f in files])
    page.get_by_label("one label per crop").check()
    for index, label in enumerate(labels):
        page.locator(f"#register-label-{index}").fill(label)
    # Enter in the last label field submits the form, as in any form.
    page.keyboard.press("Enter")


def wait_gallery_images(page: Any, count: int) -> None:
    page.locator("[data-testid=gallery-item]").nth(count - 1).wait_for()
    page.wait_for_function(
        "n => { const imgs = [...document.querySelectorAll('[data-testid=gallery-item] img')];"
        " return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0); }",
        arg=count,
    )


def query_through_page(
    page: Any, collection: str, files: list[Path], top_k: int, tracklet: bool = False, threshold: str = ""
) -> list[dict[str, Any]]:
    """Run a query from the page; returns per query-result its verdict text and ranked (label, score) list."""
    page.goto(page.url.split("#")[0] + f"#/query/{collection}")
    page.locator("#query-collection").select_option(collection)
    page.locator("#query-topk").fill(str(top_k))
    page.locator("#query-threshold").fill(threshold)
    page.locator("#query-files").set_input_files([str(f) for f in files])
    page.locator("#query-tracklet").set_checked(tracklet)
    page.locator("#query-submit").focus()
    page.keyboard.press("Enter")
    results = page.locator("[data-testid=query-result]")
    results.first.wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=match] img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    answers = []
    for i in range(results.count()):
        result = results.nth(i)
        matches = result.locator("[data-testid=match]")
        answers.append(
            {
                "verdict": result.locator("[data-testid=verdict]").inner_text(),
                "labels": [matches.nth(j).get_attribute("data-label") for j in range(matches.count())],
                "scores": [matches.nth(j).locator(".score").inner_text() for j in range(matches.count())],
            }
        )
    return answers


def assert_readable_at_1280x800(page: Any) -> None:
    assert page.viewport_size == {"width": 1280, "height": 800}
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px at 1280 wide"
    smallest = page.evaluate(
        "Math.min(...[...document.querySelectorAll('main *, header *')]"
        ".filter(e => e.offsetParent !== null && e.childNodes.length"
        " && [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim()))"
        ".map(e => parseFloat(getComputedStyle(e).fontSize)))"
    )
    assert smallest >= 12, f"text as small as {smallest}px"


def cuhk03_people(cuhk03_dir: Path) -> list[str]:
    return sorted({p.name.split("_")[0] for p in cuhk03_dir.glob("*_00.jpg")})[:PEOPLE]


def test_register_browse_and_query_real_crops_in_the_browser(
    ui_server: LiveServer, ui_page: OfflinePage, cuhk03_dir: Path, tmp_path: Path
) -> None:
    page = ui_page.page
    people = cuhk03_people(cuhk03_dir)
    assert len(people) == PEOPLE
    gallery = [cuhk03_dir / f"{pid}_{i:02d}.jpg" for pid in people for i in (0, 1)]
    probes = [cuhk03_dir / f"{pid}_02.jpg" for pid in people]  # another crop of each registered person

    # A key is needed: the page asks for it; a wrong one is refused with the API's own error.
    page.goto(f"{ui_server.url}/ui")
    page.locator("#key-input").wait_for()
    enter_key(page, "not-the-key")
    error = page.locator("[data-testid=error]")
    error.wait_for()
    assert "401 unauthorized" in error.inner_text()
    enter_key(page, KEY)
    page.locator("#collections-empty").wait_for()
    assert page.locator("[data-testid=model-info]").inner_text().startswith("Model osnet_x0_25")

    # Keyboard: from the top of the page, Tab reaches the navigation and Enter opens the register page.
    page.locator("body").focus()
    press_tab_until(page, "el.dataset.view === 'register'")
    page.keyboard.press("Enter")
    page.locator("#register-form").wait_for()
    assert page.url.endswith("#/register")

    register_through_page(page, "cuhk03-ui", gallery, [p.name.split("_")[0] for p in gallery])
    page.wait_for_url("**#/gallery/cuhk03-ui")
    wait_gallery_images(page, len(gallery))
    assert page.locator("[data-testid=notice]").inner_text() == f"Registered {len(gallery)} crops into cuhk03-ui."
    shown = page.locator("[data-testid=gallery-item]").evaluate_all("els => els.map(e => e.dataset.label)")
    assert sorted(shown) == sorted(p.name.split("_")[0] for p in gallery)
    assert_readable_at_1280x800(page)
    screenshot(page, tmp_path, "ui-gallery")

    # The same crops again: the API's 409 reaches the page, nothing is swallowed, nothing registered.
    register_through_page(page, "cuhk03-ui", gallery[:2], ["x", "y"])
    error.wait_for()
    assert "POST /gallery → 409 duplicate_crop" in error.inner_text()
    screenshot(page, tmp_path, "ui-error")

    page.goto(f"{ui_server.url}/ui#/collections")
    row = page.locator("[data-testid=collection-row][data-name=cuhk03-ui]")
    row.wait_for()
    assert row.locator("td").nth(0).inner_text() == str(len(gallery))
    assert "osnet_x0_25" in row.locator("td").nth(1).inner_text()

    answers = query_through_page(page, "cuhk03-ui", probes, top_k=4)
    assert len(answers) == PEOPLE
    firsts = [a["labels"][0] for a in answers]
    print(f"/ui query, {PEOPLE} CUHK03 people (camera A crops 00-01 registered, 02 queried): first results {firsts}")
    assert firsts == people, f"first ranked crop per query {firsts}, expected {people}"
    for answer in answers:
        assert len(answer["labels"]) == 4
        assert "threshold" in answer["verdict"] and "(" in answer["verdict"]
        assert answer["verdict"].startswith(("Match: ", "No match"))
    assert_readable_at_1280x800(page)
    screenshot(page, tmp_path, "ui-query")
    screenshot(page, tmp_path, "ui-query-full", full_page=True)

    # One tracklet of two crops of one person, with a threshold set in the query: one answer, its source named.
    two_crops = [probes[0], cuhk03_dir / f"{people[0]}_03.jpg"]
    tracklet = query_through_page(page, "cuhk03-ui", two_crops, 3, tracklet=True, threshold="0.3")
    assert len(tracklet) == 1 and tracklet[0]["labels"][0] == people[0]
    assert tracklet[0]["verdict"] == f"Match: {people[0]} · threshold 0.300 (set in this query)"

    # Delete one crop with the keyboard: the dialog opens on Cancel (the safe choice), Tab + Enter confirms.
    page.goto(f"{ui_server.url}/ui#/gallery/cuhk03-ui")
    wait_gallery_images(page, len(gallery))
    first = page.locator("[data-testid=gallery-item]").first
    victim = first.get_attribute("data-id")
    first.get_by_role("button", name="Delete").focus()
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "confirm-cancel"
    screenshot(page, tmp_path, "ui-delete-dialog")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.locator(f"[data-testid=gallery-item][data-id='{victim}']").wait_for(state="detached")
    assert page.locator("[data-testid=gallery-item]").count() == len(gallery) - 1

    assert ui_page.blocked == [], f"the page tried to leave 127.0.0.1: {ui_page.blocked}"
    hosts = {urlsplit(u).hostname for u in ui_page.requested if urlsplit(u).scheme in ("http", "https")}
    assert hosts == {"127.0.0.1"}
    assert not any(KEY in u for u in ui_page.requested), "the key appeared in a URL"
    # The only console errors are the browser's notes on the two refusals this test provoked (401 and 409).
    unexpected = [e for e in ui_page.console_errors if "401" not in e and "409" not in e]
    assert unexpected == [], unexpected


def synthetic_players(out: Path, players: int) -> dict[str, list[Path]]:
    """Crops of ``players`` synthetic people (training/data/synthetic.py), by person, 128x64."""
    from training.data.readers import parse_soccernet_name
    from training.data.synthetic import SyntheticConfig, generate_soccernet_tree

    config = SyntheticConfig(
        train_games=1,
        valid_games=0,
        test_games=0,
        actions_per_game=1,
        players_per_action=players,
        views=4,
        height=128,
        width=64,
        seed=3,
        occlusion_p=0.0,
        low_res_p=0.0,
    )
    generate_soccernet_tree(out, config)
    people: dict[str, list[Path]] = {}
    for path in sorted(out.rglob("*.png")):
        person = parse_soccernet_name(path.name).person_uid
        if person is not None:
            people.setdefault(person, []).append(path)
    return {p: crops for p, crops in people.items() if len(crops) >= 3}


def test_docs_screenshot_with_synthetic_players(ui_server: LiveServer, ui_page: OfflinePage, tmp_path: Path) -> None:
    """The docs' screenshot: synthetic players only. Written to docs/images with REID_UPDATE_DOCS_SCREENSHOT=1.
    The crops are registered by dropping them on the page.

    Five players registered (two views each); queried: a third view of player 1, and a person never registered,
    at a threshold of 0.9 so the page shows both kinds of verdict when the model separates them.
    """
    people = synthetic_players(tmp_path / "synthetic", players=10)
    assert len(people) >= 6
    names = sorted(people)[:6]
    crops = tmp_path / "crops"
    crops.mkdir()

    def copy(source: Path, name: str) -> Path:
        target = crops / name
        shutil.copy(source, target)
        return target

    gallery = [copy(people[n][v], f"player-{i + 1}_view{v + 1}.png") for i, n in enumerate(names[:5]) for v in (0, 1)]
    labels = [p.name.split("_")[0] for p in gallery]
    queries = [copy(people[names[0]][2], "player-1_view3.png"), copy(people[names[5]][0], "unknown-person.png")]
    page = ui_page.page
    page.goto(f"{ui_server.url}/ui")
    enter_key(page, KEY)
    page.locator("#view-collections").wait_for()
    register_through_page(page, "synthetic-demo", gallery, labels, by_drop=True)
    page.wait_for_url("**#/gallery/synthetic-demo")
    wait_gallery_images(page, len(gallery))
    answers = query_through_page(page, "synthetic-demo", queries, top_k=5, threshold="0.9")
    assert len(answers) == 2 and all(len(a["labels"]) == 5 for a in answers)
    print(f"docs screenshot answers: {answers}")
    shot = screenshot(page, tmp_path, "ui-query-synthetic")
    with Image.open(shot) as image:
        assert image.size == (1280, 800)
    if os.environ.get("REID_UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(shot) as image:
            # Fewer colours, same size: a small file for the repository that stays legible.
            image.convert("RGB").quantize(96).save(DOCS_SCREENSHOT, optimize=True)
    assert ui_page.blocked == []
