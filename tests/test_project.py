"""The project as a new user meets it: README commands, documented examples, the app factory."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from adapter import create_app
from adapter.mapping import MappingError, load_mapping_text

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """The shell commands of the README's quick start, in order."""
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", quick)


def test_readme_opens_with_exactly_two_commands():
    """The quick start is two commands: install+serve, and install tests+run the suite."""
    install_run, test = readme_commands()
    assert "pip install" in install_run and install_run.endswith("miso-adapter serve")
    assert "'.[test]'" in test and "pytest" in test


def test_ci_runs_the_readme_test_command():
    """.ci/run runs the very line a new user types to run the tests."""
    test = readme_commands()[1]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci_lines


def test_serve_defaults_start_on_the_embedded_store(tmp_path):
    """`miso-adapter serve` with no configuration starts, creates var/adapter.db, and says
    it is not ready because no Miso key is set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MISO_", "ADAPTER_"))}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "adapter.cli", "serve", "--bind", f"127.0.0.1:{port}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        assert ready.status_code == 503
        assert ready.json()["checks"]["miso"].startswith("MISO_API_KEY is not set")
        assert (tmp_path / "var" / "adapter.db").is_file()
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0
    assert b"SEGMENT_SHARED_SECRET is not set" in err


def test_format_reference_example_compiles_and_translates():
    """The complete example in mappings/README.md is a valid table that does what it says."""
    text = (ROOT / "mappings" / "README.md").read_text()
    example = re.search(r"## A complete small example\n\n```yaml\n(.+?)```", text, re.S).group(1)
    table = load_mapping_text(example, "mappings/README.md")
    page = {"type": "page", "anonymousId": "a1", "properties": {"path": "/products/sku-1"}}
    assert table.translate(page).records == [
        {"type": "product_detail_page_view", "anonymous_id": "a1", "product_ids": ["sku-1"]}
    ]
    alias = {"type": "alias", "userId": "u1", "previousId": "old"}
    assert [tuple(link) for link in table.translate(alias).links] == [("old", "u1")]


def test_documented_error_lines_match_the_shipped_table():
    """The error examples in mappings/README.md point at the real lines of segment.yaml."""
    doc = (ROOT / "mappings" / "README.md").read_text()
    lines = (ROOT / "mappings" / "segment.yaml").read_text().splitlines()
    search_line = int(re.search(r"segment\.yaml:(\d+): rules\[0\]\.type", doc).group(1))
    assert lines[search_line - 1].strip() == "type: search"
    category_line = int(re.search(r"segment\.yaml:(\d+): rules\[1\]\.fields", doc).group(1))
    assert lines[category_line - 2].strip() == "category: properties.category"


# Names of documents that live outside this repository: the product brief, the notes
# behind it, the folder both live in, the tracker's issues. Assembled from pieces so that
# these lines do not name them too. Upper case only for the brief: lower-case "spec" is
# ordinary English ("Segment's E-commerce spec", "a value spec"). The repository's own
# documents are cited by heading ("README.md § Identity"): a section sign before a number
# points outside.
_BRIEF, _NOTES, _SECTION = "SP" + "EC", "re" + "search", "\N{SECTION SIGN}"
_OUTSIDE_DOCUMENTS = re.compile(
    "|".join(
        [
            rf"\b{_BRIEF}\b",  # by name, with or without a section or ".md"
            rf"{_SECTION}\s*\d",  # a numbered section
            rf"(?i:\b{_NOTES}/)",  # a path into the notes
            rf"(?i:\b{_NOTES}\s+notes?\b)",
            rf"(?i:\b{_NOTES}(?:'s)?\s*{_SECTION})",
            rf"(?i:\bthe\s+{_NOTES}\b)",
            r"\.\./" + r"shared\b",  # the folder beside the repository
            r"(?i:\bissues?\s*#?\d+)",  # a numbered issue, with or without "#"
        ]
    )
)


def _shipped_files() -> list[Path]:
    """Every file git tracks; without git (an unpacked archive), every file under ROOT."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        generated = {".git", ".venv", ".hypothesis", "__pycache__", "var", "build", "dist"}
        return sorted(
            path
            for path in ROOT.rglob("*")
            if path.is_file()
            and not any(
                part in generated or part.endswith((".egg-info", "_cache"))
                for part in path.relative_to(ROOT).parts
            )
        )
    return sorted(ROOT / name for name in listed.decode().split("\0") if name)


def test_readme_layout_names_every_module():
    """The README's layout table names every module of the package by its path, so a
    newcomer finds where each job lives."""
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(adapter/[\w/]+\.py)`", layout))
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "adapter").rglob("*.py")}
    assert sorted(modules - named) == [], "modules missing from README.md § Layout"
    assert sorted(named - modules) == [], "README.md § Layout names modules that do not exist"


def test_docs_name_only_modules_that_exist():
    """Every ``adapter/….py`` path the docs and mapping tables point at is a file."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    docs += sorted(p for p in (ROOT / "mappings").rglob("*") if p.suffix in {".md", ".yaml"})
    missing = []
    for doc in docs:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for path in re.findall(r"adapter/[\w/]+\.py", line):
                if not (ROOT / path).is_file():
                    missing.append(f"{doc.relative_to(ROOT)}:{number}: {path}")
    assert not missing, "docs name modules that do not exist:\n" + "\n".join(missing)


def test_shipped_files_cite_no_document_outside_the_repository():
    """No shipped file points its reader at a document they do not have (the product brief,
    the notes behind it, tracker issues): a rule is written where it is used or in the
    repository's own docs, and references point at files that ship with it."""
    offenders = []
    for path in _shipped_files():
        if not path.is_file():  # tracked, but deleted in this working tree
            continue
        data = path.read_bytes()
        if b"\0" in data:  # binary: images
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            cited = [m.group(0) for m in _OUTSIDE_DOCUMENTS.finditer(line)]
            if cited:
                where = f"{path.relative_to(ROOT)}:{number}"
                offenders.append(f"{where}: {', '.join(map(repr, cited))} in {line.strip()[:100]}")
    assert not offenders, "documents outside the repository are cited:\n" + "\n".join(offenders)


class TestAppFactory:
    def test_fresh_app_with_test_config(self, tmp_path):
        """create_app takes a test config and compiles the tables it points at."""
        app = create_app({"TESTING": True, "MAPPINGS_DIR": str(ROOT / "mappings")})
        assert app.testing
        assert set(app.extensions["miso-adapter.translators"]) == {"mixpanel", "segment"}

    def test_default_app_is_not_testing(self):
        """Without a test config the app reads the environment and is not in testing mode."""
        assert not create_app().testing

    def test_healthz(self):
        """/healthz answers while the process is alive."""
        client = create_app({"TESTING": True}).test_client()
        response = client.get("/healthz")
        assert (response.status_code, response.json) == (200, {"status": "ok"})

    def test_errors_have_one_json_shape(self):
        """An unknown route answers the one JSON error shape."""
        response = create_app({"TESTING": True}).test_client().get("/nope")
        assert response.status_code == 404
        assert set(response.json) == {"error", "status"} and response.json["status"] == 404

    def test_broken_mapping_stops_start_up(self, tmp_path):
        """A broken table fails app creation with file, line and key, not later per event."""
        (tmp_path / "segment.yaml").write_text("event_name: event\nrules:\n  - type: like\n")
        with pytest.raises(MappingError, match=r"segment\.yaml:3: rules\[0\]: a rule needs"):
            create_app({"TESTING": True, "MAPPINGS_DIR": str(tmp_path)})

    def test_wsgi_module_exposes_app(self):
        """gunicorn's `wsgi:app` is a Flask app built by the factory."""
        import wsgi

        assert wsgi.app.name == "adapter"
