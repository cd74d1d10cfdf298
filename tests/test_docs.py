"""The documentation, checked without building it: a short README, Getting started commands that really run,
references to tests and code that exist, and the generated settings table covering every setting.

The site itself is built (mkdocs build --strict) and opened in a browser by tests/e2e/test_docs_site.py.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from service.core.settings import Settings
from tests.support.docs import page_commands, runs_command

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
README = ROOT / "README.md"
CI_SCRIPT = ROOT / ".ci" / "run"
GETTING_STARTED = DOCS / "getting-started.md"
README_MAX_LINES = 200
# The Getting started commands that tests/e2e/test_docs_site.py runs itself (the page's requests to the service).
RUN_BY_TEST = re.compile(r"^curl -s -X (POST|DELETE) http://127\.0\.0\.1:8000/")
TEST_REFERENCE = re.compile(r"\b(tests/[\w/]+\.py)(?:::(\w+))?")


def load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_reference_hook", DOCS / "_hooks" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_short_and_points_into_the_docs() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, f"README.md has {len(text.splitlines())} lines"
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)(?:#[\w-]+)?\)", text))
    missing = [link for link in linked if not (ROOT / link).is_file()]
    assert not missing, f"README links to missing pages: {missing}"
    # Every page of the site is reachable from the README's table.
    assert {f"docs/{p.name}" for p in PAGES if p.name not in ("index.md", "api-reference.md")} <= linked


def test_home_page_is_one_click_from_set_up_api_models_and_operations() -> None:
    home = (DOCS / "index.md").read_text()
    for page in ("getting-started.md", "api.md", "models.md", "operations.md"):
        assert f"]({page})" in home, f"the home page does not link to {page}"


def test_every_getting_started_command_is_run_by_ci_or_a_test() -> None:
    commands = page_commands(GETTING_STARTED)
    assert "make serve" in commands and "make test" in commands, commands
    ci = CI_SCRIPT.read_text()
    not_run = [c for c in commands if not runs_command(ci, c) and not RUN_BY_TEST.match(c)]
    assert not not_run, f"Getting started commands that neither CI nor a test runs as written: {not_run}"
    assert [c for c in commands if RUN_BY_TEST.match(c)], "the page lost its first requests"


def test_referenced_tests_exist() -> None:
    """A guarantee on the Reliability page (or any page) names a test: that test must exist under that name."""
    problems: list[str] = []
    for page in [*PAGES, README]:
        for path, name in set(TEST_REFERENCE.findall(page.read_text())):
            target = ROOT / path
            if not target.is_file():
                problems.append(f"{page.name}: {path} does not exist")
                continue
            if name:
                defined = {
                    node.name
                    for node in ast.walk(ast.parse(target.read_text()))
                    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                }
                if name not in defined:
                    problems.append(f"{page.name}: {path} has no {name}")
    assert not problems, "\n".join(problems)


def test_referenced_code_paths_exist() -> None:
    pattern = re.compile(r"(?<![\w/])((?:service|training|model|benchmarks|docker)/[\w/.-]+\.(?:py|ya?ml|sh|conf))")
    missing = sorted(
        f"{page.name}: {path}"
        for page in [*PAGES, README]
        for path in set(pattern.findall(page.read_text()))
        if not (ROOT / path).exists()
    )
    assert not missing, f"pages name files that do not exist: {missing}"


def test_settings_table_is_generated_for_every_setting_with_a_meaning() -> None:
    table = load_hook().render_settings(Settings)
    rows = dict(re.findall(r"^\| `(REID_[A-Z0-9_]+)` \|.*\| ([^|]*) \|$", table, re.M))
    expected = {f"REID_{name.upper()}" for name in Settings.model_fields}
    assert set(rows) == expected, f"missing: {sorted(expected - set(rows))}"
    blank = sorted(name for name, meaning in rows.items() if not meaning.strip())
    assert not blank, f"settings without a description (Field(description=...)) to show in the docs: {blank}"
    assert "<!-- generated: settings -->" in (DOCS / "operations.md").read_text()


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, "integer or null"),
        ({"type": "array", "items": {"$ref": "#/components/schemas/Match"}}, "array of [Match](#schema-match)"),
        ({"type": "string", "contentMediaType": "application/octet-stream"}, "file"),
    ],
)
def test_schema_types_read_as_words(schema: dict, expected: str) -> None:
    assert load_hook().type_of(schema) == expected


def test_table_cells_cannot_break_rows_or_hide_text() -> None:
    hook = load_hook()
    assert hook.cell("a | b\nc") == "a &#124; b c"
    assert hook.cell("<prefix>_items, `<code>`") == "&lt;prefix&gt;_items, `<code>`"
    assert "|" not in hook.code("^(local|milvus)$")


def test_error_codes_on_the_api_page_are_the_services() -> None:
    """The error table of 'Using the API' names only codes that the service really answers with."""
    text = (DOCS / "api.md").read_text()
    section = text[text.index("## Errors") : text.index("## Limits")]
    codes = set(re.findall(r"`([a-z]+(?:_[a-z]+)+|unauthorized|overloaded)`", section))
    source = "\n".join(p.read_text() for p in (ROOT / "service").rglob("*.py"))
    unknown = sorted(c for c in codes if f'"{c}"' not in source)
    assert codes and not unknown, f"codes on the page that the service never sends: {unknown}"
