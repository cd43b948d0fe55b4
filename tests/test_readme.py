"""The README's code blocks run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_python_blocks_run(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_blocks()[index], f"README block {index}", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out


def test_commands_come_first():
    commands = [line[2:] for line in README.read_text().splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and "pip install -e" in commands[0] and "scripts/train.py" in commands[0]
    assert "pytest" in commands[1]
