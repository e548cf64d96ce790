#!/usr/bin/env python3
"""The longest functions of src/ (tests left out), for the rule in docs/architecture.md: no
function over 80 lines. A brace count, not a parser: good enough for rustfmt-formatted code.

    python3 scripts/fn_lengths.py [src] [how many]      # "lines path function first-line"
"""

import pathlib
import re
import sys

FN = re.compile(
    r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)"
)


def lengths(root):
    for path in sorted(pathlib.Path(root).rglob("*.rs")):
        lines = path.read_text().splitlines()
        end = next(
            (i for i, line in enumerate(lines) if line.startswith("#[cfg(test)]")),
            len(lines),
        )
        for i in range(end):
            m = FN.match(lines[i])
            if not m:
                continue
            depth, started, j = 0, False, i
            while j < end:
                code = re.sub(r'"([^"\\]|\\.)*"', "", lines[j])
                code = re.sub(r"'.'", "", code).split("//")[0]
                for ch in code:
                    if ch == "{":
                        depth, started = depth + 1, True
                    elif ch == "}":
                        depth -= 1
                if (started and depth == 0) or (
                    not started and code.rstrip().endswith(";")
                ):
                    break
                j += 1
            yield j - i + 1, str(path), m.group(6), i + 1


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "src"
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    for n, path, name, line in sorted(lengths(root), reverse=True)[:top]:
        print(n, path, name, line)


if __name__ == "__main__":
    main()
