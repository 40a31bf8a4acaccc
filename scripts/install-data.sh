#!/usr/bin/env bash
# Fashion-MNIST from Debian's package `dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist).
# Without root or apt, kt falls back to torchvision's download and says what to do if that fails too.
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/t10k-labels-idx1-ubyte.gz" ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing dataset-fashion-mnist (Debian package) ..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
else
  echo "note: $dir is missing and apt-get is not usable here; kt will try torchvision's download." >&2
  echo "      to install it: sudo apt-get install dataset-fashion-mnist" >&2
fi
