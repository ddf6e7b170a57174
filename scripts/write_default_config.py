"""Rewrite configs/default.toml from the settings in vid3d/config.py (defaults and help texts).

    .venv/bin/python scripts/write_default_config.py

tests/test_config.py fails when the file and the code disagree.
"""

import textwrap
from pathlib import Path

import tomli_w

from vid3d.config import STAGE_SETTINGS, describe

HEADER = """\
# vid3d settings: every setting with its default and what it does.
# Use a copy with --config FILE, or change one setting with --set stage.key=value.
# A project remembers the settings of its last run in PROJECT/project.toml;
# --preset, --config and --set override those, in that order.
# This file is also the `default` preset (--preset default).
"""


def main() -> None:
    lines = [HEADER]
    for stage in STAGE_SETTINGS:
        lines.append(f"[{stage}]")
        for key, default, help in describe(stage):
            lines += [f"# {line}" for line in textwrap.wrap(help, 96, break_on_hyphens=False)]
            if key == "input":
                lines.append('# input = "clip.mp4"    (no default: pass --input; a preset never changes it)')
            elif key == "image":
                lines.append('# image = "reference.png"    (no default: pass --image; a preset never changes it)')
            else:
                lines.append(tomli_w.dumps({key: default}).strip())
        lines.append("")
    path = Path(__file__).resolve().parents[1] / "configs" / "default.toml"
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
