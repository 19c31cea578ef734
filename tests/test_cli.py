"""`miso-adapter translate`: JSON object, array or JSON Lines in; Miso records as JSONL out."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from adapter import cli

ROOT = Path(__file__).resolve().parent.parent

VIEW = {
    "type": "track",
    "event": "Product Viewed",
    "userId": "u1",
    "messageId": "m1",
    "timestamp": "2024-05-01T10:00:00.123Z",
    "properties": {"product_id": "p1"},
}
UNKNOWN = {"type": "track", "event": "Newsletter Opened", "anonymousId": "a1"}
RECORD = {
    "type": "product_detail_page_view",
    "user_id": "u1",
    "timestamp": "2024-05-01T10:00:00.123Z",
    "product_ids": ["p1"],
}


def run(tmp_path, capsys, data: bytes, *extra: str) -> tuple[int, list[dict], list[str]]:
    """Run translate on ``data`` (written to a file); return code, records, stderr lines
    (with the file's path written as FILE)."""
    path = tmp_path / "input.json"
    path.write_bytes(data)
    code = cli.main(["translate", "segment", str(path), *extra])
    captured = capsys.readouterr()
    records = [orjson.loads(line) for line in captured.out.splitlines()]
    return code, records, captured.err.replace(str(path), "FILE").splitlines()


def test_jsonl_input(tmp_path, capsys):
    """JSON Lines: one record per translated line, one stderr line per skipped line."""
    data = b"\n".join(orjson.dumps(m) for m in (VIEW, UNKNOWN, VIEW)) + b"\n"
    code, records, err = run(tmp_path, capsys, data)
    assert code == 0
    assert records == [RECORD, RECORD]
    assert err == [
        "FILE:2: skipped: no rule for event 'Newsletter Opened'",
        "3 inputs: 2 records, 1 skipped, 0 errors, 0 identity links, 0 deletions",
    ]


def test_json_array_input(tmp_path, capsys):
    """A JSON array (Webhooks (Actions) batch) is read item by item."""
    code, records, err = run(tmp_path, capsys, orjson.dumps([VIEW, UNKNOWN]))
    assert (code, records) == (0, [RECORD])
    assert err[0] == "FILE item 2: skipped: no rule for event 'Newsletter Opened'"


def test_pretty_printed_object_input(tmp_path, capsys):
    """A single pretty-printed JSON object spanning lines is one message."""
    code, records, _ = run(tmp_path, capsys, orjson.dumps(VIEW, option=orjson.OPT_INDENT_2))
    assert (code, records) == (0, [RECORD])


def test_tracking_api_batch_input(tmp_path, capsys):
    """A `{"batch": [...]}` body is unwrapped, its shared context merged into each item."""
    body = {"batch": [VIEW], "context": {"locale": "fr-FR"}, "writeKey": "k"}
    code, records, _ = run(tmp_path, capsys, orjson.dumps(body))
    assert code == 0
    assert records == [{**RECORD, "context": {"locale": "fr-FR"}}]


def test_bad_lines_are_reported_and_skipped(tmp_path, capsys):
    """A malformed line is reported with its line number, a value that is no message is
    skipped saying why; the rest still translates; exit 1."""
    data = orjson.dumps(VIEW) + b"\n{not json\n\n42\n" + orjson.dumps(VIEW) + b"\n"
    code, records, err = run(tmp_path, capsys, data)
    assert code == 1
    assert records == [RECORD, RECORD]
    assert err[0].startswith("FILE:2: error: invalid JSON: ")
    assert err[1] == (
        "FILE:4: skipped: not a Segment message: expected a Segment message (JSON object), "
        "got number"
    )
    assert err[-1] == "3 inputs: 2 records, 1 skipped, 1 errors, 0 identity links, 0 deletions"


def test_identity_and_deletion_summaries(tmp_path, capsys):
    """Calls that teach links or request deletion say so on their skipped line."""
    data = b"\n".join(
        orjson.dumps(m)
        for m in (
            {"type": "identify", "userId": "u1", "anonymousId": "a1"},
            {"type": "delete", "userId": "u1"},
        )
    )
    code, records, err = run(tmp_path, capsys, data)
    assert (code, records) == (0, [])
    assert err == [
        "FILE:1: skipped: identity call, not an interaction (1 identity link)",
        "FILE:2: skipped: user deletion request (deletion of user 'u1')",
        "2 inputs: 0 records, 2 skipped, 0 errors, 1 identity links, 1 deletions",
    ]


def test_stdin(monkeypatch, capsys):
    """`-` (and no file at all) reads standard input."""
    for argv in (["translate", "segment", "-"], ["translate", "segment"]):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(orjson.dumps(VIEW))))
        assert cli.main(argv) == 0
        assert orjson.loads(capsys.readouterr().out) == RECORD


def test_gzip_file_and_stdin_translate_like_the_plain_file(tmp_path, capsys, monkeypatch):
    """Gzip (known by its first bytes, whatever the name), from a file or stdin: same output."""
    plain = (ROOT / "examples" / "segment-events.jsonl").read_bytes()
    packed = gzip.compress(plain)
    (tmp_path / "plain.jsonl").write_bytes(plain)
    (tmp_path / "events.jsonl").write_bytes(packed)  # no .gz: the content tells

    def translate(*argv: str) -> tuple[int, str, str]:
        """The outcome, with a file's locations (``PATH:3``) written as stdin's (``line 3``)."""
        code = cli.main(["translate", "segment", *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err.replace(f"{argv[0]}:", "line ")

    expected = translate(str(tmp_path / "plain.jsonl"))
    assert expected[0] == 0 and len(expected[1].splitlines()) >= 10
    assert translate(str(tmp_path / "events.jsonl")) == expected
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(packed)))
    assert translate("-") == expected
    piped = subprocess.run(
        [sys.executable, "-m", "adapter.cli", "translate", "segment", "-"],
        input=packed, capture_output=True, check=False, cwd=ROOT,
    )  # fmt: skip
    assert (piped.returncode, piped.stdout.decode(), piped.stderr.decode()) == expected


def test_damaged_gzip_is_a_one_line_error(tmp_path, capsys):
    """A gzip file cut short ends with a one-line reason and exit 1, not a traceback."""
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(orjson.dumps(VIEW) + b"\n" + orjson.dumps(VIEW))[:-12])
    assert cli.main(["translate", "segment", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read {path}: ") and err.count("\n") == 1, err


def test_empty_input(tmp_path, capsys):
    """An empty file translates to nothing, successfully."""
    code, records, err = run(tmp_path, capsys, b"\n\n")
    assert (code, records) == (0, [])
    assert err == ["0 inputs: 0 records, 0 skipped, 0 errors, 0 identity links, 0 deletions"]


def test_missing_file(capsys):
    """A file that does not exist is exit 1 with a one-line reason."""
    assert cli.main(["translate", "segment", "/nonexistent/x.jsonl"]) == 1
    assert capsys.readouterr().err == (
        "error: cannot read /nonexistent/x.jsonl: No such file or directory\n"
    )


def test_broken_mapping_stops_translate(tmp_path, capsys):
    """translate refuses to run on a broken mapping, naming file, line and key."""
    (tmp_path / "segment.yaml").write_text("event_name: event\nrules:\n  - events: [A]\n")
    code = cli.main(["translate", "segment", "--mappings", str(tmp_path), "-"])
    assert code == 1
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'segment.yaml'}:3: rules[0]: ")


@pytest.mark.parametrize(
    "argv",
    [["translate"], ["translate", "amplitude", "-"], ["frobnicate"], ["mappings", "check", "-x"]],
)
def test_usage_errors_exit_2(argv, capsys):
    """Wrong arguments are a usage error: exit 2."""
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2


def test_no_command_prints_help(capsys):
    """Running without a command shows the commands and exits 2."""
    assert cli.main([]) == 2
    assert "translate" in capsys.readouterr().err


def test_console_script_on_bundled_example():
    """The installed `miso-adapter` runs the README's first command on the bundled example."""
    example = ROOT / "examples" / "segment-events.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "adapter.cli", "translate", "segment", str(example)],
        capture_output=True,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr.decode()
    records = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert len(records) >= 10
    assert {r["type"] for r in records} >= {"product_detail_page_view", "add_to_cart", "checkout"}
    assert "Traceback" not in done.stderr.decode()


def test_options_may_follow_the_source(tmp_path, capsys):
    """`translate segment --mappings DIR FILE` works: options go anywhere."""
    folder = ROOT / "mappings"
    path = tmp_path / "in.jsonl"
    path.write_bytes(orjson.dumps(VIEW))
    assert cli.main(["translate", "segment", "--mappings", str(folder), str(path)]) == 0
    assert orjson.loads(capsys.readouterr().out) == RECORD


def test_replay_segment_learns_sign_ins_first(tmp_path, monkeypatch, capsys):
    """An anonymous visit 1,500 lines before its identify (another chunk) is written by a
    dry run with the user too: replay reads the files' identify and alias calls first."""
    monkeypatch.setenv("ADAPTER_STORE", f"sqlite:///{tmp_path}/none.db")
    visit = {**VIEW, "userId": None, "anonymousId": "anon-9", "messageId": "v1"}
    filler = [{**UNKNOWN, "messageId": f"f{n}"} for n in range(1500)]
    identify = {"type": "identify", "userId": "u9", "anonymousId": "anon-9", "messageId": "i1"}
    path = tmp_path / "archive.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(m) for m in [visit, *filler, identify]) + b"\n")
    out = tmp_path / "records.jsonl"
    assert cli.main(["replay", "segment", str(path), "--dry-run", "--output", str(out)]) == 0
    [record] = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert (record["anonymous_id"], record["user_id"]) == ("anon-9", "u9")


def test_a_program_of_ours_collects_garbage_less_often_and_not_its_startup_objects():
    """The program (not main(), which tests call in-process) freezes what startup made
    and runs the young collection every 10,000 allocations instead of 700."""
    code = (
        "import gc, sys; from adapter import cli; cli.main = lambda: "
        "print(gc.get_threshold()[0], gc.get_freeze_count() > 1000) or 0; cli.run()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["10000", "True"]
