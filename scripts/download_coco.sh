#!/usr/bin/env bash
# Download and unpack COCO 2017 (train2017, val2017, test2017, annotations, image_info_test-dev2017) into DIR.
#   scripts/download_coco.sh [DIR=data/coco] [--skip-md5]
# Downloads resume where they stopped (wget -c / curl -C -); each archive is checked against the size the server
# announces, against its published MD5 sum and with `unzip -t` before it is unpacked. About 26 GB in all.
set -euo pipefail
DIR=data/coco; SKIP_MD5=0
for arg in "$@"; do
  case "$arg" in
    --skip-md5) SKIP_MD5=1 ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) DIR=$arg ;;
  esac
done
mkdir -p "$DIR"; cd "$DIR"
# name  url  md5
FILES=(
  "annotations_trainval2017.zip http://images.cocodataset.org/annotations/annotations_trainval2017.zip f4bbac642086de4f52a3fdda2de5fa2c"
  "image_info_test2017.zip http://images.cocodataset.org/annotations/image_info_test2017.zip 85da7065e5e600ebfee8af1edb634eb5"
  "val2017.zip http://images.cocodataset.org/zips/val2017.zip 442b8da7639aecaf257c1dceb8ba8c80"
  "test2017.zip http://images.cocodataset.org/zips/test2017.zip 77ad2c53ac5d0aea611d422c0938fb35"
  "train2017.zip http://images.cocodataset.org/zips/train2017.zip cced6f7f71b7629ddf16f17bbcfab6b2"
)
remote_size() { curl -sIL "$1" | tr -d '\r' | awk 'tolower($1)=="content-length:" {n=$2} END {print n}'; }
fetch() {
  if command -v wget >/dev/null; then wget -c -q --show-progress -O "$1" "$2"; else curl -L -C - -o "$1" "$2"; fi
}
for entry in "${FILES[@]}"; do
  read -r name url md5 <<<"$entry"
  marker=".${name}.done"
  if [ -f "$marker" ]; then echo "$name: already downloaded and unpacked"; continue; fi
  want=$(remote_size "$url" || true)
  have=$(stat -c %s "$name" 2>/dev/null || echo 0)
  if [ -z "$want" ] || [ "$have" != "$want" ]; then
    echo "$name: downloading ($have of ${want:-?} bytes present)"; fetch "$name" "$url"
  fi
  have=$(stat -c %s "$name")
  if [ -n "$want" ] && [ "$have" != "$want" ]; then
    echo "$name: size $have != $want announced by the server; run the script again to resume" >&2; exit 1
  fi
  if [ "$SKIP_MD5" = 0 ]; then
    got=$(md5sum "$name" | cut -d' ' -f1)
    if [ "$got" != "$md5" ]; then
      echo "$name: MD5 $got != expected $md5 (delete the file to download it again, or pass --skip-md5)" >&2; exit 1
    fi
  fi
  unzip -tq "$name" >/dev/null || { echo "$name: the archive is corrupt (unzip -t failed)" >&2; exit 1; }
  unzip -q -o "$name" && touch "$marker" && echo "$name: ok"
done
echo "COCO 2017 is in $(pwd): train2017/ val2017/ test2017/ annotations/ (incl. image_info_test-dev2017.json)"
