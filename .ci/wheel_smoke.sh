#!/usr/bin/env bash
# CI: does the built wheel work once installed? Build it, install it into a fresh virtual
# environment outside the checkout, and run `pixsearch status` and `pixsearch index` from
# outside the checkout, offline, with the tests' tiny CLIP. This is what catches files the
# wheel forgets (the Alembic migrations did: every command that opens a home needs them).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
started=$SECONDS

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pixsearch-wheel.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

uv build --wheel --quiet --out-dir "$tmp/dist"
wheel=$(echo "$tmp"/dist/pixsearch-*.whl)
.venv/bin/python - "$wheel" <<'EOF'
import subprocess, sys, zipfile

names = set(zipfile.ZipFile(sys.argv[1]).namelist())
needed = [
    "indexer/migrations/env.py",
    "indexer/migrations/script.py.mako",
    # The shipped `demo` model (PIXSEARCH_MODEL=demo, `pixsearch demo`).
    "indexer/demo_model/clip/pixsearch-tiny-clip.json",
    "indexer/demo_model/clip/tiny_clip_weights.npz",
    "indexer/demo_model/captioner/clipcap_config.json",
    "indexer/demo_model/captioner/clipcap_weights.npz",
]
missing = [n for n in needed if n not in names]
# The web page's files: its ES modules and style sheets load one another by URL, so a file the
# wheel forgets breaks the page, not an import.
static = subprocess.run(
    ["git", "ls-files", "api/static"], capture_output=True, text=True, check=True
).stdout.split()
missing += [n for n in static if n not in names]
if "api/static/app.js" not in static:
    sys.exit("wheel smoke: git lists no api/static/app.js: run from the checkout")
versions = [n for n in names if n.startswith("indexer/migrations/versions/") and n.endswith(".py")]
if missing or not versions:
    sys.exit(f"wheel smoke: the wheel lacks {missing or 'indexer/migrations/versions/*.py'}")
EOF

# The tiny trained CLIP of tests/assets, written as an open_clip config + checkpoint: no
# weights can be downloaded here, and it is what a user's PIXSEARCH_PRETRAINED file is.
.venv/bin/python -c "
import sys
from tests.assets.tiny_models import materialize_tiny_clip
materialize_tiny_clip(sys.argv[1])
" "$tmp/model"

# Same interpreter as the project; the dependencies pinned to uv.lock's versions, so that
# uv's cache has them all (installed by linking, no download) and the wheel is tested with
# what the tests ran against.
uv export --frozen --no-dev --no-emit-project --no-hashes --quiet -o "$tmp/constraints.txt"
uv venv --quiet --python .venv/bin/python "$tmp/venv"
uv pip install --quiet --python "$tmp/venv/bin/python" --constraint "$tmp/constraints.txt" "$wheel"

mkdir "$tmp/work"
cd "$tmp/work"  # outside the checkout: nothing can be imported from it
unset PYTHONPATH PYTHONDONTWRITEBYTECODE  # a throwaway venv: let later processes reuse bytecode
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PIXSEARCH_HOME="$tmp/home" PIXSEARCH_CAPTIONER=none
export PIXSEARCH_MODEL="$tmp/model/pixsearch-tiny-clip.json"
export PIXSEARCH_PRETRAINED="$tmp/model/pixsearch-tiny-clip.pt"
py="$tmp/venv/bin/python"
"$py" - "$tmp" "$repo" <<'EOF'
import sys
from pathlib import Path

import indexer.db
from PIL import Image, ImageDraw

tmp, repo = Path(sys.argv[1]), Path(sys.argv[2])
for where in (Path(indexer.db.__file__), indexer.db.migrations_dir()):
    if not where.resolve().is_relative_to(tmp / "venv"):
        sys.exit(f"wheel smoke: {where} is not the installed copy")
pictures = tmp / "pictures"
pictures.mkdir()
for i, colour in enumerate(["red", "green", "blue", "yellow", "purple", "orange"]):
    img = Image.new("RGB", (128, 96), "white" if i % 2 else "black")
    ImageDraw.Draw(img).ellipse((20 + 4 * i, 10, 90, 80), fill=colour)
    img.save(pictures / f"p{i}.jpg")
EOF
"$tmp/venv/bin/pixsearch" status >/dev/null
out=$("$tmp/venv/bin/pixsearch" index "$tmp/pictures" --json)
"$py" -c "
import json, sys
report = json.loads(sys.argv[1])
if report['added'] != 6 or report['failed']:
    sys.exit(f'wheel smoke: unexpected index report {report}')
" "$out"
"$tmp/venv/bin/pixsearch" status --json | "$py" -c "
import json, sys
info = json.load(sys.stdin)
if info['indexed_with_model'] != 6:
    sys.exit(f'wheel smoke: unexpected status {info}')
"
# The demo model shipped in the wheel, with its captioner, in a home of its own.
out=$(PIXSEARCH_HOME="$tmp/demo-home" PIXSEARCH_MODEL=demo PIXSEARCH_CAPTIONER=demo \
    "$tmp/venv/bin/pixsearch" index "$tmp/pictures" --captions --json)
"$py" -c "
import json, sys
report = json.loads(sys.argv[1])
if report['added'] != 6 or report.get('captioned') != 6:
    sys.exit(f'wheel smoke: the demo model did not index and caption: {report}')
" "$out"
# Ray is an extra the default install lacks: --ray then says how to get it, in one line.
if err=$("$tmp/venv/bin/pixsearch" index "$tmp/pictures" --ray auto 2>&1); then
  echo "wheel smoke: index --ray worked without Ray installed"; exit 1
fi
case "$err" in
  *"uv sync --extra ray"*) ;;
  *) echo "wheel smoke: index --ray without Ray said: $err"; exit 1 ;;
esac
echo "wheel smoke: installed wheel indexed 6 pictures, and with the demo model captioned them ($((SECONDS - started)) s)"
