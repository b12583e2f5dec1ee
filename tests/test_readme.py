import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _quick_start():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.S).group(1)
    return [l for l in block.splitlines() if l.strip()]


def test_readme_has_two_commands_and_ci_runs_the_test_one():
    cmds = _quick_start()
    assert len(cmds) == 2
    assert "qhyvit quantize" in cmds[0] and "pip install" in cmds[0]
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert cmds[1] in ci.splitlines()
    assert "set -euo pipefail" in ci
